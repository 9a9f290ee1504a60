"""The posterior-family table: one row per guide family, each trained on MNIST with the IWAE-paper
network by `pyro-vae train`, scored by `pyro-vae evaluate` and `pyro-vae explore`, and tabled by
`pyro-vae compare`, all run as a user runs them (whole processes), one family after another on the
same machine.

The table is `pyro-vae compare`'s (Markdown), the first row the baseline: log p(x) on the first
``--limit`` test images, with K = ``--num-samples``; the ELBO on those images; the gap log p(x) -
ELBO (an estimate of KL(q(z|x) || p(z|x))); the share of images with PSIS k-hat above 0.7; the
active units; the test ELBO after the last epoch (all 10,000 test images, `metrics.csv`); and
each row's paired difference in log p(x) from the first, with its 95% interval. Then seconds per
epoch as `metrics.csv` records them (training and the test ELBO), timed apart: ``--rounds``
rounds (0: not timed), each a fresh two-epoch `pyro-vae train` of every row in turn (alternating
rows, so a busy spell of the machine hits all of them), the median over rounds of each row's
second epoch (the first also pays the step's compile).

    python benchmarks/guides.py [--epochs 10] [--num-samples 1000] [--limit 1000] [--rounds 5]
        [--out runs/guides] [--rows diagonal,full_rank,iaf,iaf_gated]

A row whose run folder already holds a finished run of as many epochs is evaluated as it is, and
an evaluation already stored with these settings is used as it is.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

from commands import pyro_vae, read_csv

from pyro_vae import records

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "examples" / "configs" / "mnist_vae.toml"
ROWS = {
    "diagonal": (BASE, []),
    "full_rank": (BASE, ["model.guide=full_rank"]),
    "iaf": (REPO / "examples" / "configs" / "mnist_iaf.toml", []),
    "iaf_gated": (REPO / "examples" / "configs" / "mnist_iaf.toml", ["model.guide.stable=true"]),
}


def train(name, run, epochs, resume=False):
    config, sets = ROWS[name]
    flags = [arg for item in sets + [f"train.epochs={epochs}"] for arg in ("--set", item)]
    pyro_vae("train", "--config", str(config), *flags, *(["--resume"] if resume else []), "--no-progress", "--out", str(run))


def prepare(name, args):
    """Train, evaluate and explore the row's run where its folder does not hold them yet."""
    run = Path(args.out) / name
    done = len(read_csv(run / "metrics.csv"))
    if done < args.epochs:
        train(name, run, args.epochs, resume=done > 0)
    if not (run / records.FOLDER / records.log_px_name(args.num_samples, args.limit, 0)).exists():
        pyro_vae("evaluate", str(run), "--num-samples", str(args.num_samples), "--limit", str(args.limit))
    if not (run / records.FOLDER / records.explore_name(0)).exists():
        pyro_vae("explore", str(run))
    return run


def epoch_seconds(names, rounds):
    """Each row's second-epoch seconds in ``rounds`` fresh two-epoch runs, rows alternating."""
    seconds = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name in names:
                run = Path(tmp) / f"{name}-{r}"
                train(name, run, 2)
                seconds[name].append(float(read_csv(run / "metrics.csv")[1]["seconds"]))
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
    runs = [str(prepare(name, args)) for name in names]
    print(pyro_vae("compare", *runs, "--num-samples", str(args.num_samples), "--format", "markdown"), end="")
    if args.rounds:
        seconds = epoch_seconds(names, args.rounds)
        print(f"seconds per epoch, median of {args.rounds} rounds:", {name: round(statistics.median(s), 2) for name, s in seconds.items()})
        print("each round:", {name: [round(s, 2) for s in values] for name, values in seconds.items()})


if __name__ == "__main__":
    main()
