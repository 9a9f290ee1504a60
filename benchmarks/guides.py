"""The posterior-family table: one row per guide family, each trained on MNIST with the IWAE-paper
network by `pyro-vae train` and scored by `pyro-vae evaluate`, both run as a user runs them (whole
processes), one family after another on the same machine.

Per row: the test ELBO after the last epoch (all 10,000 test images, `metrics.csv`); from
`pyro-vae evaluate --num-samples K --limit N --json`: log p(x), the ELBO on those N images, the
gap log p(x) - ELBO (an estimate of KL(q(z|x) || p(z|x))), the share of images with PSIS k-hat above
0.7; and the median seconds per epoch over epochs 2 onward (epoch 1 also pays the step's compile).

    python benchmarks/guides.py [--epochs 10] [--num-samples 1000] [--limit 1000] [--out runs/guides]
        [--rows diagonal,full_rank,iaf,iaf_gated]

A row whose run folder already holds a finished run of as many epochs is evaluated as it is.
"""

import argparse
import csv
import json
import statistics
import subprocess
import sys
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


def row(name, args):
    config, sets = ROWS[name]
    run = Path(args.out) / name
    if len(metrics(run)) < args.epochs:
        flags = [arg for item in sets + [f"train.epochs={args.epochs}"] for arg in ("--set", item)]
        resume = ["--resume"] if metrics(run) else []
        pyro_vae("train", "--config", str(config), *flags, *resume, "--no-progress", "--out", str(run))
    summary = json.loads(pyro_vae("evaluate", str(run), "--num-samples", str(args.num_samples), "--limit", str(args.limit),
                                  "--json").strip().splitlines()[-1])
    epochs = metrics(run)
    seconds = statistics.median(float(e["seconds"]) for e in epochs[1:]) if len(epochs) > 1 else float(epochs[0]["seconds"])
    return [name, f"{float(epochs[-1]['test_elbo']):.2f}", f"{summary['log_px']:.2f} ± {summary['log_px_stderr']:.2f}",
            f"{summary['elbo']:.2f}", f"{summary['gap']:.2f} ± {summary['gap_stderr']:.2f}",
            f"{100 * summary['khat_frac_above_0_7']:.1f}%", f"{seconds:.1f}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--out", default="runs/guides")
    parser.add_argument("--rows", default=",".join(ROWS))
    args = parser.parse_args()
    head = ["guide", "test ELBO (10,000)", f"log p(x), K = {args.num_samples}", f"ELBO ({args.limit})", "gap", "k-hat > 0.7",
            "s / epoch"]
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for name in args.rows.split(","):
        print("| " + " | ".join(row(name, args)) + " |", flush=True)


if __name__ == "__main__":
    main()
