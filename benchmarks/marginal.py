"""The importance-weighted log p(x) estimator against a plain-PyTorch one, and its memory in K.

    python benchmarks/marginal.py [--num-samples 5000] [--batch-size 100] [--repeats 5] [--device auto]

Network: the IWAE paper's 784-200-200-50 tanh VAE with a Bernoulli likelihood, untrained (time
and memory do not depend on the weights), on the first ``--batch-size`` MNIST test images with
one seeded binarization (``PYRO_VAE_DATA`` points at the torchvision root).

(a) Time: ``pyro_vae.estimate_log_px`` (log weights from tracing the guide and replaying the
    model) against the same estimator written by hand in PyTorch (reparameterized draws, the
    three log densities, the same logsumexp / mean / ESS reductions and the same ArviZ PSIS
    through ``pyro_vae.marginal.pareto_khat``),
    same K, same batch, same chunk size, with distribution argument checks off in both. The
    hand-written one comes twice, with log p(x|z) from ``torch.distributions.Bernoulli`` and from
    the fused ``binary_cross_entropy_with_logits``. All run in turn, ``--repeats`` times each
    after one warm-up round; the best and the median wall time are shown, and the ratio of the
    best times. Target: ratio at most 1.2. On a shared machine the median moves with the load;
    the best run is the figure least disturbed by it.

(b) Peak memory at K = 500 and K = 5000, each measured in a fresh Python process so that one
    measurement cannot inherit another's high-water mark. On CUDA: ``torch.cuda.max_memory_allocated``
    over the estimate (device memory, what bounds K there). On CPU, ``tracemalloc`` does not see
    torch's allocations, so the figure is the process's peak resident set size (Linux
    ``VmHWM``), with the high-water mark reset through ``/proc/self/clear_refs`` right before the
    estimate, after torch, ArviZ, the network and the data are loaded (importing and loading
    briefly use more than they keep, and ``ru_maxrss`` cannot be reset, so it would hide the
    estimate). Printed in total and as the increase over the resident size just before the
    estimate: the estimator's own working memory. Target: K = 5000 within 1.2x of K = 500, for
    both figures. A third row runs K = 500 with ``chunk_size = K`` (all samples at once,
    K x batch x 784 floats): it shows that this measurement does see memory that grows with K
    when there is some.
"""

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from plain import IWAE_PAPER_NET
from torchvision.datasets import MNIST

from pyro_vae import VAE, estimate_log_px
from pyro_vae.data import binarize_fixed, data_root
from pyro_vae.distributed import resolve_device
from pyro_vae.marginal import CHUNK_ELEMENTS, pareto_khat, psis_khat


def setup(batch_size, device):
    torch.manual_seed(0)
    vae = VAE(784, 50, encoder=IWAE_PAPER_NET, decoder=IWAE_PAPER_NET).to(device).eval()
    # only the test images used: the whole training set would set the memory high-water mark
    images = MNIST(data_root(None), train=False).data[:batch_size]
    x = binarize_fixed(images.reshape(len(images), -1).float() / 255, 0, "test").to(device)
    return vae, x


# log p(x | z) summed over pixels from the decoder's logits, two ways a PyTorch user writes it:
# the distribution pyro_vae's Bernoulli likelihood also uses (whose log_prob negates the whole
# chunk x batch x 784 tensor), and the fused loss with the sign applied after the pixel sum
LOG_LIKELIHOODS = {
    "torch.distributions": lambda logits, x: torch.distributions.Bernoulli(logits=logits, validate_args=False).log_prob(x).sum(-1),
    "fused BCE": lambda logits, x: -torch.nn.functional.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1),
}


@torch.no_grad()
def plain_estimate(encoder, decoder, x, num_samples, chunk_size, log_likelihood):
    """The same estimator without Pyro: per datum logsumexp_k log w_k - log K, mean log w_k,
    ESS = (sum w)^2 / sum w^2 and the PSIS k-hat, z_k = loc + scale * eps_k drawn in chunks."""
    loc, scale = encoder(x)
    q = torch.distributions.Normal(loc, scale, validate_args=False)
    prior = torch.distributions.Normal(0.0, 1.0, validate_args=False)
    lw = torch.empty(num_samples, x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, num_samples, chunk_size):
        stop = min(start + chunk_size, num_samples)
        z = q.rsample((stop - start,))
        lw[start:stop] = log_likelihood(decoder(z), x) + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
    lse = torch.logsumexp(lw, 0)
    ess = torch.exp(2 * lse - torch.logsumexp(2 * lw, 0))
    return lse - math.log(num_samples), lw.mean(0), ess, pareto_khat(lw)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timing(args, device):
    vae, x = setup(args.batch_size, device)
    chunk = min(args.num_samples, CHUNK_ELEMENTS // (args.batch_size * 784))
    runs = {"pyro_vae.estimate_log_px": lambda: estimate_log_px(vae, x, num_samples=args.num_samples, chunk_size=chunk).log_px}
    for name, log_likelihood in LOG_LIKELIHOODS.items():
        runs[f"plain, {name}"] = lambda f=log_likelihood: plain_estimate(vae.encoder, vae.decoder, x, args.num_samples, chunk, f)[0]
    times = {name: [] for name in runs}
    estimates = {}
    for rep in range(args.repeats + 1):  # the first round warms up both
        for name, run in runs.items():
            sync(device)
            started = time.perf_counter()
            estimates[name] = run().mean().item()
            sync(device)
            if rep:
                times[name].append(time.perf_counter() - started)
    print(f"(a) time: IWAE-paper net (untrained), {args.batch_size} MNIST test images, K = {args.num_samples}, chunk {chunk}, {device}, {args.repeats} runs each")
    print(f"{'estimator':<28}{'best s':>9}{'median s':>10}{'mean log p(x)':>16}")
    for name in runs:
        print(f"{name:<28}{min(times[name]):>9.2f}{statistics.median(times[name]):>10.2f}{estimates[name]:>16.2f}")
    ours, *plains = (min(times[name]) for name in runs)
    ratios = ", ".join(f"{ours / t:.3f} vs plain {name}" for name, t in zip(LOG_LIKELIHOODS, plains))
    print(f"time ratio pyro_vae / plain (best runs): {ratios}   (target <= 1.2)")


def proc_status_bytes(field):
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def child_memory(num_samples, chunk_size, batch_size, device):
    """Runs in a fresh process: prints the memory before one estimate and its peak, as JSON."""
    psis_khat()  # ArviZ loaded before the baseline is read, like torch
    vae, x = setup(batch_size, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        # "5" resets the peak RSS to the current RSS (Linux >= 4.0), so imports and data loading
        # do not leave a high-water mark above what the estimate itself reaches
        Path("/proc/self/clear_refs").write_text("5")
        before = proc_status_bytes("VmRSS")
    estimate_log_px(vae, x, num_samples=num_samples, chunk_size=chunk_size)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else proc_status_bytes("VmHWM")
    print(json.dumps({"before": before, "peak": peak}))


def memory(args, device):
    kind = "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM, reset before the estimate)"
    print(f"(b) peak memory, {kind}, fresh process per row, {args.batch_size} images, {device}")
    print(f"{'K':>6}{'chunk':>10}{'peak MiB':>10}{'increase over pre-estimate MiB':>32}")
    peaks = {}
    for k, chunk in ((500, 0), (5000, 0), (500, 500)):
        command = [sys.executable, __file__, "--child-memory", str(k), "--chunk-size", str(chunk), "--batch-size", str(args.batch_size), "--device", str(device)]
        out = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        label = "default" if not chunk else f"{chunk} (=K)"
        print(f"{k:>6}{label:>10}{out['peak'] / 2**20:>10.0f}{(out['peak'] - out['before']) / 2**20:>32.0f}")
        peaks[(k, chunk)] = out
    small, large = peaks[(500, 0)], peaks[(5000, 0)]
    growth = (large["peak"] - large["before"]) / (small["peak"] - small["before"])
    print(f"K = 5000 / K = 500 (default chunk): total {large['peak'] / small['peak']:.3f}, increase {growth:.3f}   (target <= 1.2)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--child-memory", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.child_memory:
        child_memory(args.child_memory, args.chunk_size or None, args.batch_size, device)
        return
    timing(args, device)
    print()
    memory(args, device)


if __name__ == "__main__":
    main()
