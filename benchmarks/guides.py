"""The posterior-family table: one row per guide family, each trained on MNIST with the IWAE-paper
network by `pyro-vae train` and scored by `pyro-vae evaluate`, both run as a user runs them (whole
processes), one family after another on the same machine.

Per row: the test ELBO after the last epoch (all 10,000 test images, `metrics.csv`); from
`pyro-vae evaluate --num-samples K --limit N --json`: log p(x), the ELBO on those N images, the
gap log p(x) - ELBO (an estimate of KL(q(z|x) || p(z|x))), the share of images with PSIS k-hat above
0.7; and seconds per epoch as `metrics.csv` records them (training and the test ELBO), timed apart:
``--rounds`` rounds, each a fresh two-epoch `pyro-vae train` of every row in turn (alternating
rows, so a busy spell of the machine hits all of them), the median over rounds of each row's
second epoch (the first also pays the step's compile).

    python benchmarks/guides.py [--epochs 10] [--num-samples 1000] [--limit 1000] [--rounds 5]
        [--out runs/guides] [--rows diagonal,full_rank,iaf,iaf_gated]

A row whose run folder already holds a finished run of as many epochs is evaluated as it is.
"""

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "examples" / "configs" / "mnist_vae.toml"
ROWS = {
    "diagonal": (BASE, []),
    "full_rank": (BASE, ["model.guide=full_rank"]),
    "iaf": (REPO / "examples" / "configs" / "mnist_iaf.toml", []),
    "iaf_gated": (REPO / "examples" / "configs" / "mnist_iaf.toml", ["model.guide.stable=true"]),
}


def pyro_vae(*argv):
    done = subprocess.run([sys.executable, "-m", "pyro_vae", *argv], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"pyro-vae {' '.join(argv)} failed:\n{done.stderr}")
    return done.stdout


def metrics(run):
    path = run / "metrics.csv"
    return list(csv.DictReader(path.open())) if path.exists() else []


def train(name, run, epochs, resume=False):
    config, sets = ROWS[name]
    flags = [arg for item in sets + [f"train.epochs={epochs}"] for arg in ("--set", item)]
    pyro_vae("train", "--config", str(config), *flags, *(["--resume"] if resume else []), "--no-progress", "--out", str(run))


def row(name, args, seconds):
    run = Path(args.out) / name
    done = len(metrics(run))
    if done < args.epochs:
        train(name, run, args.epochs, resume=done > 0)
    summary = json.loads(pyro_vae("evaluate", str(run), "--num-samples", str(args.num_samples), "--limit", str(args.limit),
                                  "--json").strip().splitlines()[-1])
    return [name, f"{float(metrics(run)[-1]['test_elbo']):.2f}", f"{summary['log_px']:.2f} ± {summary['log_px_stderr']:.2f}",
            f"{summary['elbo']:.2f}", f"{summary['gap']:.2f} ± {summary['gap_stderr']:.2f}",
            f"{100 * summary['khat_frac_above_0_7']:.1f}%", f"{statistics.median(seconds):.1f}"]


def epoch_seconds(names, rounds):
    """Each row's second-epoch seconds in ``rounds`` fresh two-epoch runs, rows alternating."""
    seconds = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name in names:
                run = Path(tmp) / f"{name}-{r}"
                train(name, run, 2)
                seconds[name].append(float(metrics(run)[1]["seconds"]))
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="runs/guides")
    parser.add_argument("--rows", default=",".join(ROWS))
    args = parser.parse_args()
    names = args.rows.split(",")
    seconds = epoch_seconds(names, args.rounds)
    head = ["guide", "test ELBO (10,000)", f"log p(x), K = {args.num_samples}", f"ELBO ({args.limit})", "gap", "k-hat > 0.7",
            f"s / epoch (median of {args.rounds})"]
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for name in names:
        print("| " + " | ".join(row(name, args, seconds[name])) + " |", flush=True)
    print("seconds per epoch, each round:", {name: [round(s, 2) for s in values] for name, values in seconds.items()})


if __name__ == "__main__":
    main()
