"""One SVI training step of the IWAE-paper VAE (784-200-200-50 tanh, Bernoulli) at batch 100,
against the same step written in plain PyTorch, measured side by side in one run.

Rows:
  plain PyTorch     hand-written reparameterized single-sample ELBO, torch.optim.Adam
  pyro_vae          the package's step: Trace_ELBO.differentiable_loss on vae.model / vae.guide,
                    one torch optimizer over the module's parameters, Pyro validation and
                    per-step pyro.module registration off (the optimizer already holds them)
  SVI (reference)   pyro.infer.SVI + pyro.optim.Adam + Trace_ELBO with validation on: what a
                    Pyro user writes first

The three are timed in interleaved rounds (each round runs every variant for the same number of
steps) so that load from other processes hits all of them alike; the table shows the best (minimum)
step time over rounds (the least disturbed by other load, as timeit does) and the ratio to plain PyTorch. Target: pyro_vae <= 1.15x on CPU.

    python benchmarks/train_step.py [--device cpu|cuda] [--batch-size 100] [--rounds 15] [--steps 50]
"""

import argparse
import time

import pyro
import torch
from plain import IWAE_PAPER_NET, plain_step
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import VAE
from pyro_vae.objectives import make_objective


def iwae_paper_vae(device):
    return VAE(784, 50, encoder=IWAE_PAPER_NET, decoder=IWAE_PAPER_NET).to(device)


def package_step(vae, optimizer):
    objective = make_objective("elbo")

    def step(x):
        with pyro.validation_enabled(False), vae.parameters_registered(False):
            loss = objective.differentiable_loss(vae.model, vae.guide, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def svi_step(vae):
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    def step(x):
        with pyro.validation_enabled(True):
            svi.step(x)

    return step


def time_steps(step, batches, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for x in batches:
        step(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(batches)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    batches = [torch.bernoulli(torch.rand(args.batch_size, 784, device=device) * 0.3) for _ in range(args.steps)]
    variants = {}
    vae = iwae_paper_vae(device)
    variants["plain PyTorch"] = plain_step(vae.encoder, vae.decoder, torch.optim.Adam(vae.parameters(), lr=1e-3))
    vae = iwae_paper_vae(device)
    variants["pyro_vae"] = package_step(vae, torch.optim.Adam(vae.parameters(), lr=1e-3))
    variants["SVI (reference)"] = svi_step(iwae_paper_vae(device))
    for step in variants.values():  # warm-up: allocator, Adam state, Pyro's first trace
        time_steps(step, batches[:5], device)
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            times[name].append(time_steps(step, batches, device))
    base = min(times["plain PyTorch"])
    print(f"one training step, IWAE-paper VAE, batch {args.batch_size}, {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; best of {args.rounds} rounds x {args.steps} steps")
    print(f"{'variant':<18}{'ms/step':>10}{'x plain':>10}")
    for name, values in times.items():
        best = min(values)
        print(f"{name:<18}{best * 1e3:>10.3f}{best / base:>10.2f}")


if __name__ == "__main__":
    main()
