"""Reproduce a row of the quality table: train a config for some epochs, then measure the test
log p(x) with `pyro-vae evaluate` (importance sampling, K samples per test image), and print the
row with its hardware, commit and timings.

    python benchmarks/quality.py examples/configs/mnist_vae.toml --epochs 10 --num-samples 5000 --out runs/q/vae10
    python benchmarks/quality.py examples/configs/mnist_iwae.toml --epochs 10 --out runs/q/iwae10

An existing run folder with fewer epochs is resumed; one with as many is evaluated as it is.
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from pyro_vae.run import load_checkpoint
from pyro_vae import config as config_lib
from pyro_vae.errors import UserError
from pyro_vae.run import train_run

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
    started = time.perf_counter()
    command = [sys.executable, "-m", "pyro_vae", "evaluate", str(out), "--num-samples", str(args.num_samples), "--json"]
    if args.limit:
        command += ["--limit", str(args.limit)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stderr)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    eval_seconds = time.perf_counter() - started
    history = load_checkpoint(out / "checkpoint.pt")["state"]["history"]
    print("| config | objective | prior | epochs | test ELBO | test log p(x) (K, images) | k-hat > 0.7 | train s | eval s | hardware | commit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {Path(args.config).name} {' '.join(args.overrides)} | {cfg.train.objective} k={cfg.train.num_particles} | {cfg.model.prior} "
          f"| {args.epochs} | {history[-1]['test_elbo']:.2f} | {summary['log_px']:.2f} ± {summary['log_px_stderr']:.2f} "
          f"({summary['num_samples']}, {summary['n']}) | {summary['khat_frac_above_0_7']:.1%} | {train_seconds:.0f} | {eval_seconds:.0f} "
          f"| {hardware()} | {commit()} |")


if __name__ == "__main__":
    main()
