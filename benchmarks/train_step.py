"""Training speed as users feel it: whole `pyro-vae train` processes, compiled and eager, against
a plain-PyTorch training process (benchmarks/plain_train.py), on the IWAE-paper VAE
(784-200-200-50 tanh, Bernoulli, dynamic binarization, Adam 1e-3, the shipped defaults).

Every variant runs as its own process for N epochs, the variants alternating so that load from
other processes hits all of them alike; the table shows the median over the repeats of the
whole process's wall time and of its last epoch's time (each epoch includes the test-set ELBO,
for both), each with its ratio to plain PyTorch. The compiled step's compile time is reported
on its own line, from the trainer's log: once with an empty inductor cache (a first run on a
machine; that process is a warm-up and is not in the medians), and the median with the cache
that run left (every later run). With --batch-sizes it then prints the last-epoch time and
throughput per batch size, one process per variant and size.

    python benchmarks/train_step.py [--epochs 2] [--repeats 3] [--device cpu|cuda] [--batch-sizes 100,1000,10000] [--limit N]
"""

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
COMPILED_LINE = re.compile(r"compiled the training step for batches of shape .* in ([0-9.]+) s")
PLAIN_EPOCH_LINE = re.compile(r"epoch \d+: .*, ([0-9.]+) s$", re.MULTILINE)


def run(command, env):
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds, result


def plain(args, batch_size, env):
    command = [sys.executable, str(HERE / "plain_train.py"), "--data", args.data, "--epochs", str(args.epochs),
               "--batch-size", str(batch_size), "--device", args.device, "--limit", str(args.limit)]
    seconds, result = run(command, env)
    return {"process": seconds, "epoch": float(PLAIN_EPOCH_LINE.findall(result.stdout)[-1]), "compile": 0.0}


def package(args, batch_size, compile, env):
    with tempfile.TemporaryDirectory() as out:
        settings = [f'data.dir="{args.data}"', f"train.epochs={args.epochs}", f"train.batch_size={batch_size}",
                    f"train.device={args.device}", f"train.compile={compile}", f"data.limit={args.limit}"]
        command = [sys.executable, "-m", "pyro_vae", "train", "--out", out, "--no-progress"]
        for item in settings:
            command += ["--set", item]
        seconds, result = run(command, env)
        with open(Path(out) / "metrics.csv") as f:
            epoch = float(list(csv.DictReader(f))[-1]["seconds"])
    return {"process": seconds, "epoch": epoch, "compile": sum(float(s) for s in COMPILED_LINE.findall(result.stderr))}


def variants(args, batch_size, env):
    return {
        "plain PyTorch": lambda: plain(args, batch_size, env),
        "pyro-vae compile=on": lambda: package(args, batch_size, "on", env),
        "pyro-vae compile=off": lambda: package(args, batch_size, "off", env),
    }


def medians(runs, repeats):
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, once in runs.items():
            times[name].append(once())
    return {name: {key: statistics.median(t[key] for t in ts) for key in ts[0]} for name, ts in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("PYRO_VAE_DATA", str(HERE.parents[1] / "shared" / "data")))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--epochs", type=int, default=2, help="epochs per process (the last one is the per-epoch figure)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each variant (median)")
    parser.add_argument("--limit", type=int, default=0, help="train on the first N images only (0: all 60,000), for a quick look")
    parser.add_argument("--batch-sizes", default="", help="comma-separated batch sizes for the scaling table, e.g. 100,1000,10000")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))

    with tempfile.TemporaryDirectory() as cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache  # empty: the first compiled process compiles from scratch
        cold = package(args, 100, "on", env)
        plain(args, 100, env)  # the same warm-up (file cache, allocator) for the baseline
        table = medians(variants(args, 100, env), args.repeats)

        base = table["plain PyTorch"]
        print(f"whole training processes, IWAE-paper VAE, batch 100, {args.epochs} epochs, {args.device}, torch {torch.__version__}, "
              f"{os.cpu_count()} CPUs; median of {args.repeats} alternating runs")
        print(f"{'variant':<22}{'process s':>11}{'x plain':>9}{'last epoch s':>14}{'x plain':>9}")
        for name, t in table.items():
            print(f"{name:<22}{t['process']:>11.2f}{t['process'] / base['process']:>9.2f}{t['epoch']:>14.2f}{t['epoch'] / base['epoch']:>9.2f}")
        print(f"compile time: {cold['compile']:.1f} s with an empty inductor cache (first run), "
              f"{table['pyro-vae compile=on']['compile']:.1f} s with the cache it left (median)")

        if args.batch_sizes:
            print(f"\n{'batch':>8}{'plain s/epoch':>15}{'compiled':>10}{'eager':>8}{'x plain c/e':>13}{'compiled images/s':>19}")
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                t = medians(variants(args, batch_size, env), 1)
                p, c, e = (t[name]["epoch"] for name in ("plain PyTorch", "pyro-vae compile=on", "pyro-vae compile=off"))
                print(f"{batch_size:>8}{p:>15.2f}{c:>10.2f}{e:>8.2f}{c / p:>8.2f}/{e / p:.2f}{(args.limit or 60_000) / c:>19.0f}")


if __name__ == "__main__":
    main()
