"""One SVI training step of the IWAE-paper VAE (784-200-200-50 tanh, Bernoulli) at batch 100,
against the same step written in plain PyTorch, measured side by side in one run.

Each variant runs an epoch loop over the same device-resident data (shuffle, slice the batch,
binarize it, step), so the package is measured through its real trainer:
  plain PyTorch     hand-written reparameterized single-sample ELBO, torch.optim.Adam
  pyro_vae          pyro_vae.train.fit: Trace_ELBO.differentiable_loss on vae.model / vae.guide,
                    one torch optimizer over the module's parameters, Pyro validation and
                    per-step pyro.module registration off, step-seeded noise (pyro_vae.noise)
  SVI (reference)   pyro.infer.SVI + pyro.optim.Adam + Trace_ELBO with validation on: what a
                    Pyro user writes first

The variants run in interleaved rounds so that load from other processes hits all of them alike;
the table shows the best (minimum) time per step over rounds, the least disturbed by other load
(as timeit does), and the ratio to plain PyTorch. Target: pyro_vae <= 1.15x on CPU. With
--batch-sizes it also prints how step time and throughput grow with the batch size.

    python benchmarks/train_step.py [--device cpu|cuda] [--rounds 20] [--steps 100] [--batch-sizes 100,1000,10000]
"""

import argparse
import time

import pyro
import torch
from plain import IWAE_PAPER_NET, plain_step
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import VAE
from pyro_vae import config as config_lib
from pyro_vae.data import Dataset, Split
from pyro_vae.train import TrainState, fit


def iwae_paper_vae(device):
    return VAE(784, 50, encoder=IWAE_PAPER_NET, decoder=IWAE_PAPER_NET).to(device)


def epoch_loop(step, x, batch_size):
    def run():
        order = torch.randperm(len(x), device=x.device)
        for start in range(0, len(x), batch_size):
            step(torch.bernoulli(x[order[start : start + batch_size]]))

    return run


def package_run(x, batch_size, device):
    """Each call trains one more epoch through the package's trainer (whose end-of-epoch test
    ELBO here scores a single batch, a forward pass: under 1% of the epoch's time)."""
    vae = iwae_paper_vae(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    ds = Dataset(Split(x, None), Split(torch.bernoulli(x[:batch_size]), None), (28, 28), None)
    state = TrainState()

    def run():
        overrides = [f"train.batch_size={batch_size}", f"train.epochs={state.epoch + 1}", f"train.eval_batch_size={batch_size}"]
        fit(vae, ds, config_lib.load(None, overrides), optimizer=optimizer, state=state, progress=False)

    return run


def svi_run(x, batch_size, device):
    vae = iwae_paper_vae(device)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    def step(batch):
        with pyro.validation_enabled(True):
            svi.step(batch)

    return epoch_loop(step, x, batch_size)


def timed(run, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(x, batch_size, rounds, device, with_svi=True):
    vae = iwae_paper_vae(device)
    variants = {
        "plain PyTorch": epoch_loop(plain_step(vae.encoder, vae.decoder, torch.optim.Adam(vae.parameters(), lr=1e-3)), x, batch_size),
        "pyro_vae": package_run(x, batch_size, device),
    }
    if with_svi:
        variants["SVI (reference)"] = svi_run(x, batch_size, device)
    for run in variants.values():  # warm-up: allocator, Adam state, Pyro's first trace
        run()
    times = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, run in variants.items():
            times[name] = min(times[name], timed(run, device))
    steps = -(-len(x) // batch_size)
    return {name: t / steps for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100, help="steps per round (an epoch of steps x batch images)")
    parser.add_argument("--batch-sizes", default="", help="comma-separated batch sizes for the scaling table")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.steps * 100, 784, device=device) * 0.3
    per_step = compare(x, 100, args.rounds, device)
    base = per_step["plain PyTorch"]
    print(f"one training step, IWAE-paper VAE, batch 100, {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; best of {args.rounds} rounds x {args.steps} steps")
    print(f"{'variant':<18}{'ms/step':>10}{'x plain':>10}")
    for name, seconds in per_step.items():
        print(f"{name:<18}{seconds * 1e3:>10.3f}{seconds / base:>10.2f}")
    if args.batch_sizes:
        print(f"\n{'batch':>8}{'plain ms/step':>16}{'pyro_vae ms/step':>18}{'x plain':>9}{'pyro_vae images/s':>19}")
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            steps = max(5, min(args.steps, 100_000 // batch_size))  # per-epoch costs stay small against the steps
            x = torch.rand(steps * batch_size, 784, device=device) * 0.3
            t = compare(x, batch_size, max(2, args.rounds // 3), device, with_svi=False)
            print(f"{batch_size:>8}{t['plain PyTorch'] * 1e3:>16.3f}{t['pyro_vae'] * 1e3:>18.3f}"
                  f"{t['pyro_vae'] / t['plain PyTorch']:>9.2f}{batch_size / t['pyro_vae']:>19.0f}")


if __name__ == "__main__":
    main()
