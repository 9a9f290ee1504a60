"""The objectives and layers tables: standard IWAE against DReG (and PIWAE / MIWAE) on MNIST with the
IWAE-paper network, and one stochastic layer against Burda et al.'s two (under the ELBO and under
IWAE with k = 5), each row trained by `pyro-vae train` and scored by `pyro-vae evaluate` and
`pyro-vae explore`, as a user runs them (whole processes).

Per row: the test ELBO of q after the last epoch (all 10,000 test images, `metrics.csv`); from
`pyro-vae evaluate RUN --num-samples K --limit N --json`: log p(x) on the first N test images, the
ELBO on them and the gap log p(x) - ELBO; the paired difference in log p(x) against the standard
IWAE row with the same number of samples (`log_px.csv`, the same images and the same seeded
evaluation draws), with its standard error over images; active units (`pyro-vae explore --json`; per layer, "16+5", for a stack);
the median of the run's own seconds per epoch after the first (training and the test ELBO, as
`metrics.csv` records them). With ``--snr-draws D``, the encoder-gradient signal-to-noise ratio of
both estimators at each trained model: D seeded draws of the k-sample gradient on the first 100
test images, |mean| / std per encoder weight, averaged over weights.

    python benchmarks/objectives.py [--epochs 10] [--out runs/objectives] [--rows iwae_k5,dreg_k5,iwae_k50,dreg_k50]
        [--num-samples 1000] [--limit 1000] [--snr-draws 0]
    python benchmarks/objectives.py --rows vae_1layer,vae_2layer,iwae_k5,iwae_k5_2layer                  # the layers table
    python benchmarks/objectives.py --rows vae_1layer_warmup,vae_2layer_warmup,iwae_k5_warmup,iwae_k5_2layer_warmup   # with KL warm-up

A row whose run folder holds fewer epochs than --epochs is trained on (`--resume`, exact);
one that holds as many is evaluated as it is.
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from commands import pyro_vae, read_csv

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "examples" / "configs"
ONE_LAYER, TWO_LAYERS = "mnist_iwae.toml", "mnist_vae_2layer.toml"
ROWS = {  # name: (objective, k, the row it is paired with, config[, more --set overrides])
    "iwae_k5": ("iwae", 5, None, ONE_LAYER),
    "dreg_k5": ("dreg", 5, "iwae_k5", ONE_LAYER),
    "iwae_k50": ("iwae", 50, None, ONE_LAYER),
    "dreg_k50": ("dreg", 50, "iwae_k50", ONE_LAYER),
    "iwae_k64": ("iwae", 64, None, ONE_LAYER),
    "piwae_k64": ('{type="piwae", bounds=8}', 64, "iwae_k64", ONE_LAYER),
    "miwae_k64": ('{type="miwae", bounds=8}', 64, "iwae_k64", ONE_LAYER),
    "vae_1layer": ("mean_field", 1, None, ONE_LAYER),
    # the two-layer config warms the KL up over 5 epochs; these rows train without it
    "vae_2layer": ("mean_field", 1, "vae_1layer", TWO_LAYERS, ("train.kl_warmup_epochs=0",)),
    "iwae_k5_2layer": ("iwae", 5, "iwae_k5", TWO_LAYERS, ("train.kl_warmup_epochs=0",)),
    # KL warm-up over the first 5 epochs, for one layer and two
    "vae_1layer_warmup": ("mean_field", 1, "vae_1layer", ONE_LAYER, ("train.kl_warmup_epochs=5",)),
    "vae_2layer_warmup": ("mean_field", 1, "vae_1layer_warmup", TWO_LAYERS, ("train.kl_warmup_epochs=5",)),
    "iwae_k5_warmup": ("iwae", 5, "iwae_k5", ONE_LAYER, ("train.kl_warmup_epochs=5",)),
    "iwae_k5_2layer_warmup": ("iwae", 5, "iwae_k5_warmup", TWO_LAYERS, ("train.kl_warmup_epochs=5",)),
}


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def train(name, run, epochs):
    objective, k, _, config, *more = ROWS[name]
    done = len(read_csv(run / "metrics.csv"))
    if done >= epochs:
        return
    sets = [f"train.objective={objective}", f"train.num_particles={k}", f"train.epochs={epochs}", *(more[0] if more else ())]
    pyro_vae("train", "--config", str(CONFIGS / config), *[a for s in sets for a in ("--set", s)], *(["--resume"] if done else []),
             "--no-progress", "--out", str(run))


def paired(run, baseline):
    """Mean and standard error over images of log p(x) minus the baseline's, on the same images."""
    mine = {r["index"]: float(r["log_px"]) for r in read_csv(run / "log_px.csv")}
    theirs = {r["index"]: float(r["log_px"]) for r in read_csv(baseline / "log_px.csv")}
    d = [mine[i] - theirs[i] for i in mine if i in theirs]
    return statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d))


def encoder_snr(run, objective, k, draws):
    """Encoder-gradient SNR of ``objective`` with k samples at the trained weights of ``run``."""
    import torch

    from pyro_vae import noise
    from pyro_vae.objectives import make_objective
    from pyro_vae.run import load_split
    from pyro_vae.step import Step

    _, vae, _, test = load_split(run, "test", 100, "cpu")
    step = Step(vae, make_objective(objective, k), dynamic_binarization=False, compile="off")
    x = test.x
    grads = []
    for d in range(draws):
        step(x, test.y, noise.StepNoise(1, d, len(x), slice(None), x.device))
        grads.append(torch.cat([p.grad.reshape(-1) for p in vae.encoder.parameters()]))
    g = torch.stack(grads)
    return (g.mean(0).abs() / g.std(0)).nanmean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="runs/objectives")
    parser.add_argument("--rows", default="iwae_k5,dreg_k5,iwae_k50,dreg_k50")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--snr-draws", type=int, default=0)
    args = parser.parse_args()
    names = args.rows.split(",")
    for name in names:
        if name not in ROWS:
            sys.exit(f"unknown row {name!r}; rows: {', '.join(ROWS)}")
    head = ["objective", "k", "layers", "epochs", "test ELBO of q (10,000)", f"log p(x), K = {args.num_samples}", "paired vs its baseline row",
            f"ELBO ({args.limit})", "gap", "active units", "s / epoch (median)"]
    if args.snr_draws:
        head += [f"encoder SNR, IWAE gradient ({args.snr_draws} draws)", "encoder SNR, DReG gradient"]
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head), flush=True)
    for name in names:
        objective, k, baseline, config, *_ = ROWS[name]
        run = Path(args.out) / name
        train(name, run, args.epochs)
        summary = last_json(pyro_vae("evaluate", str(run), "--num-samples", str(args.num_samples), "--limit", str(args.limit), "--json"))
        explored = last_json(pyro_vae("explore", str(run), "--out", str(run / "explore"), "--json"))
        history = read_csv(run / "metrics.csv")
        seconds = [float(r["seconds"]) for r in history[1:]] or [float(history[0]["seconds"])]
        difference = "" if baseline is None else "{:+.2f} ± {:.2f}".format(*paired(run, Path(args.out) / baseline))
        cells = [objective.replace('"', ""), str(k), "2" if config == TWO_LAYERS else "1", str(len(history)), f"{float(history[-1]['test_elbo']):.2f}",
                 f"{summary['log_px']:.2f} ± {summary['log_px_stderr']:.2f}", difference, f"{summary['elbo']:.2f}",
                 f"{summary['gap']:.2f}", explored.get("active_units_by_layer", str(explored["active_units"])), f"{statistics.median(seconds):.0f}"]
        if args.snr_draws:
            cells += [f"{encoder_snr(run, 'iwae', k, args.snr_draws):.3f}", f"{encoder_snr(run, 'dreg', k, args.snr_draws):.3f}"]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
