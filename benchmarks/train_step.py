"""Training speed as users feel it: whole `pyro-vae train` processes, compiled, eager and
`compile = auto`, against plain-PyTorch training processes (benchmarks/plain_train.py), eager (with
torch's default Adam, the issue's anchor, and with the fused Adam that pyro-vae uses) and with the
loss under torch.compile, on the IWAE-paper VAE (784-200-200-50 tanh, Bernoulli,
dynamic binarization, Adam 1e-3, the shipped defaults); then a small user dataset's job.

Every variant runs as its own process for N epochs, the variants alternating so that load from
other processes hits all of them alike; each table shows the median over the repeats of the
whole process's wall time and of its last epoch's time (each epoch includes the test-set ELBO,
for all of them), each as a ratio to plain eager PyTorch and to plain compiled PyTorch, and the
compile time from the trainer's log (the compiled plain script's compile is inside its first
epoch). Each batch size is timed twice:

* cold cache: every compiling process starts with an empty inductor cache and an empty temporary
  folder (where inductor keeps its precompiled header), as on a machine's first run;
* warm cache: every process shares one cache, filled by a run of each compiling variant first.

The small job stands for a user's own data: the first 1,965 MNIST training images cropped to
28x20 and saved as a `.npy` (`data.path`, so 10% held out: 1,769 images, 17 batches of 100 and
one of 69), grey, a Gaussian likelihood, a 2-D latent, 50 epochs (900 steps): `compile = auto`
against `off` and `on`, cold and warm.

    python benchmarks/train_step.py [--epochs 10] [--repeats 3] [--batch-sizes 100,1000] [--device cpu|cuda] [--limit N] [--adam foreach|fused|compiled] [--no-small]
                                    [--caches cold,warm] [--only "plain PyTorch" --only "pyro-vae compile=auto" ...]

``--only`` keeps the MNIST variants named (the first is then the ratios' base), for more rounds of
the comparison a target is about.
"""

import argparse
import contextlib
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from commands import read_csv, run

HERE = Path(__file__).resolve().parent
COMPILED_LINE = re.compile(r"compiled the training step for batches of shape .* in ([0-9.]+) s")
AUTO_LINE = re.compile(r"train\.compile = auto: (compiling the training step|training traced|training eager)")
PLAIN_EPOCH_LINE = re.compile(r"epoch \d+: .*, ([0-9.]+) s$", re.MULTILINE)
SMALL_JOB = ["model.likelihood=gaussian", "data.binarize=none", "model.latent_dim=2"]


@contextlib.contextmanager
def cache(env, folder=None):
    """``env`` with inductor's cache in ``folder``, or, without one, in a new empty folder whose
    temporary directory is empty too (inductor keeps its precompiled header there)."""
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory())
            env = dict(env, TMPDIR=folder)
        yield dict(env, TORCHINDUCTOR_CACHE_DIR=str(Path(folder) / "inductor"))


def plain(args, batch_size, env, compiled, adam=None):
    command = [sys.executable, str(HERE / "plain_train.py"), "--data", args.data, "--epochs", str(args.epochs),
               "--batch-size", str(batch_size), "--device", args.device, "--limit", str(args.limit)]
    if compiled:
        command += ["--compile"]
    if adam:
        command += ["--adam", adam]
    seconds, result = run(command, env)
    return {"process": seconds, "epoch": float(PLAIN_EPOCH_LINE.findall(result.stdout)[-1]), "compile": 0.0, "chose": ""}


def package(args, settings, compile, env):
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "pyro_vae", "train", "--out", out, "--no-progress"]
        for item in [f'data.dir="{args.data}"', f"train.epochs={args.epochs}", f"train.device={args.device}",
                     f"train.compile={compile}", f"data.limit={args.limit}", *settings]:
            command += ["--set", item]
        seconds, result = run(command, env)
        epoch = float(read_csv(Path(out) / "metrics.csv")[-1]["seconds"])
    chose = AUTO_LINE.search(result.stderr)
    return {"process": seconds, "epoch": epoch, "compile": sum(float(s) for s in COMPILED_LINE.findall(result.stderr)),
            "chose": "" if chose is None else {"compiling the training step": "compiled", "training traced": "traced"}.get(chose.group(1), "eager")}


def mnist_variants(args, batch_size):
    """name -> (runs(env), compiles): the processes of one batch size."""
    settings = [f"train.batch_size={batch_size}"]
    return {
        "plain PyTorch": (lambda env: plain(args, batch_size, env, False), False),
        # the Adam pyro-vae itself uses (train.make_optimizer): the eager anchor with its optimizer as fast
        "plain PyTorch, fused Adam": (lambda env: plain(args, batch_size, env, False, "fused"), False),
        "plain PyTorch, torch.compile": (lambda env: plain(args, batch_size, env, True, args.adam), True),
        "pyro-vae compile=on": (lambda env: package(args, settings, "on", env), True),
        "pyro-vae compile=auto": (lambda env: package(args, settings, "auto", env), True),
        "pyro-vae compile=off": (lambda env: package(args, settings, "off", env), False),
    }


def small_variants(args, path):
    settings = [f'data.path="{path}"', *SMALL_JOB]
    job = argparse.Namespace(**{**vars(args), "epochs": 50, "limit": 0})
    return {f"pyro-vae compile={mode}": (lambda env, mode=mode: package(job, settings, mode, env), mode != "off")
            for mode in ("off", "auto", "on")}


def medians(variants, repeats, env, warm):
    """Median of ``repeats`` alternating rounds, each in a rotated order; cold: a fresh cache for every compiling process;
    warm: one cache for all, filled by one untimed run of each compiling variant."""
    times = {name: [] for name in variants}
    with contextlib.ExitStack() as stack:
        if warm:
            shared = stack.enter_context(cache(env, stack.enter_context(tempfile.TemporaryDirectory())))
            for once, compiles in variants.values():
                if compiles:
                    once(shared)
        for round_ in range(repeats):
            # each round starts one variant later, so that no variant always follows the same one
            # (a row that always ran right after a compiling one read 1.5x slow at 8182e0e)
            names = list(variants)
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                once, compiles = variants[name]
                if warm or not compiles:
                    times[name].append(once(shared if warm else env))
                else:
                    with cache(env) as fresh:
                        times[name].append(once(fresh))
    return {name: {**{key: statistics.median(t[key] for t in ts) if key != "chose" else "/".join(sorted({t[key] for t in ts}))
                      for key in ts[0]}, "each": [t["process"] for t in ts]} for name, ts in times.items()}


def show(title, table, bases):
    """``bases``: column label -> the variant each ratio is to."""
    print(f"\n{title}")
    header = "".join(f"{'x ' + label:>15}" for label in bases)
    print(f"{'variant':<30}{'process s':>10}{header}{'last epoch s':>13}{header}{'compile s':>10}  {'auto chose':<16}each process s")
    for name, t in table.items():
        ratios = lambda key: "".join(f"{t[key] / table[b][key]:>15.2f}" for b in bases.values())  # noqa: E731
        print(f"{name:<30}{t['process']:>10.2f}{ratios('process')}{t['epoch']:>13.2f}{ratios('epoch')}{t['compile']:>10.1f}  {t['chose']:<16}"
              + " ".join(f"{s:.1f}" for s in t["each"]))


def small_dataset(root, folder):
    """The small job's data: 1,965 MNIST training images cropped to 28x20, as a user's .npy."""
    from torchvision.datasets import MNIST

    images = MNIST(root, train=True).data[:1965, :, 4:24].reshape(1965, -1).float() / 255.0
    path = Path(folder) / "small.npy"
    np.save(path, images.numpy())
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("PYRO_VAE_DATA", str(HERE.parents[1] / "shared" / "data")))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--epochs", type=int, default=10, help="epochs per MNIST process (the last one is the per-epoch figure)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each variant (median)")
    parser.add_argument("--limit", type=int, default=0, help="train on the first N images only (0: all 60,000), for a quick look")
    parser.add_argument("--batch-sizes", default="100,1000", help="comma-separated MNIST batch sizes (\"\": the small job only)")
    parser.add_argument("--adam", default="foreach", choices=("foreach", "fused", "compiled"), help="the compiled plain script's Adam")
    parser.add_argument("--no-small", action="store_true", help="skip the small user-dataset job")
    parser.add_argument("--caches", default="cold,warm", help="comma-separated: cold, warm or both")
    parser.add_argument("--only", action="append", default=[], help="an MNIST variant to run, by name (repeat it; default: all)")
    args = parser.parse_args()
    caches = [c == "warm" for c in args.caches.split(",") if c]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))

    print(f"IWAE-paper VAE, {args.epochs} epochs of {args.limit or 60_000} images per process, {args.device}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs; median of {args.repeats} alternating runs; the compiled plain script's Adam: {args.adam}")
    bases = {"plain": "plain PyTorch", "plain comp.": "plain PyTorch, torch.compile"}
    only = args.only
    if unknown := [name for name in only if name not in mnist_variants(args, 100)]:
        parser.error(f"--only: no variant {unknown[0]!r}; the variants are: {'; '.join(mnist_variants(args, 100))}")
    if only:
        bases = {"row 1": only[0]}
    for batch_size in (int(b) for b in args.batch_sizes.split(",") if b):
        for warm in caches:
            variants = mnist_variants(args, batch_size)
            table = medians({name: variants[name] for name in only} if only else variants, args.repeats, env, warm)
            show(f"batch {batch_size}, {'warm' if warm else 'cold'} cache", table, bases)
    if not args.no_small:
        with tempfile.TemporaryDirectory() as folder:
            path = small_dataset(args.data, folder)
            for warm in caches:
                table = medians(small_variants(args, path), args.repeats, env, warm)
                show(f"small user dataset (1,769 grey 28x20 images, Gaussian, 2-D latent, 50 epochs, batch 100), {'warm' if warm else 'cold'} cache",
                     table, {"off": "pyro-vae compile=off"})


if __name__ == "__main__":
    main()
