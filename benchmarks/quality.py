"""Reproduce a row of the quality table: train a config for some epochs, measure the test log p(x)
with `pyro-vae evaluate` (importance sampling, K samples per test image) and the active units
with `pyro-vae explore`, both stored in the run folder, and print the row as `pyro-vae compare`
tables it, with its hardware, commit and timings. With ``--compare-with`` the table also holds
those runs (the first is the baseline), paired image by image.

    python benchmarks/quality.py examples/configs/mnist_vae.toml --epochs 10 --num-samples 5000 --out runs/q/vae10
    python benchmarks/quality.py examples/configs/mnist_iwae.toml --epochs 10 --out runs/q/iwae10 --compare-with runs/q/vae10

An existing run folder with fewer epochs is resumed; one with as many is evaluated as it is, and
an evaluation (or explore) already stored with these settings is used as it is.
"""

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from commands import pyro_vae

from pyro_vae import config as config_lib
from pyro_vae import records
from pyro_vae.errors import UserError
from pyro_vae.run import load_checkpoint, train_run

REPO = Path(__file__).resolve().parents[1]


def hardware():
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def commit():
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip() or "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--limit", type=int, default=0, help="evaluate on the first N test images only (0: all 10,000)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare-with", nargs="+", default=[], metavar="RUN", help="runs to table beside this one, the first the baseline")
    args = parser.parse_args()
    out = Path(args.out)
    cfg = config_lib.load(args.config, args.overrides + [f"train.epochs={args.epochs}"])
    started = time.perf_counter()
    done = load_checkpoint(out / "checkpoint.pt")["state"]["epoch"] if (out / "checkpoint.pt").exists() else 0
    if done < args.epochs:
        try:
            train_run(cfg, out, resume=done > 0, progress=False)
        except UserError as e:
            sys.exit(f"quality.py: {e}")
    train_seconds = time.perf_counter() - started
    evaluated = "stored before"
    if not (out / records.FOLDER / records.log_px_name(args.num_samples, args.limit, 0)).exists():
        started = time.perf_counter()
        pyro_vae("evaluate", str(out), "--num-samples", str(args.num_samples), *(["--limit", str(args.limit)] if args.limit else []))
        evaluated = f"{time.perf_counter() - started:.0f} s"
    if not (out / records.FOLDER / records.explore_name(0)).exists():
        pyro_vae("explore", str(out))
    print(f"{Path(args.config).name} {' '.join(args.overrides)}: {args.epochs} epochs; this process: train {train_seconds:.0f} s, "
          f"evaluate {evaluated}; {hardware()}; commit {commit()}")
    runs = [*args.compare_with, str(out)]
    print(pyro_vae("compare", *runs, "--num-samples", str(args.num_samples), "--format", "markdown"), end="")


if __name__ == "__main__":
    main()
