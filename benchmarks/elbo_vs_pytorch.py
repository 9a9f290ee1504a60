"""Test ELBO of the IWAE-paper VAE trained by pyro_vae against the same network trained the
same way in plain PyTorch (dynamic binarization, batch 100, Adam 1e-3), side by side in one run.

Both are scored by the same evaluator (pyro_vae.train.elbo_per_datum: single-sample ELBO in
nats per test image, the seeded binarization of the test set). Target: within 1 nat.

    python benchmarks/elbo_vs_pytorch.py [--epochs 10] [--device cpu]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from plain import IWAE_PAPER_NET, plain_step

from pyro_vae import VAE
from pyro_vae import config as config_lib
from pyro_vae.data import load_dataset
from pyro_vae.distributed import resolve_device
from pyro_vae.run import train_run
from pyro_vae.train import elbo_per_datum

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "mnist_vae.toml"


def train_plain(ds, epochs, device, seed):
    torch.manual_seed(seed)
    vae = VAE(784, 50, encoder=IWAE_PAPER_NET, decoder=IWAE_PAPER_NET).to(device)
    step = plain_step(vae.encoder, vae.decoder, torch.optim.Adam(vae.parameters(), lr=1e-3))
    x_all = ds.train.x.to(device)
    for _ in range(epochs):
        order = torch.randperm(len(x_all), device=device)
        for start in range(0, len(x_all), 100):
            step(torch.bernoulli(x_all[order[start : start + 100]]))
    return vae


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = config_lib.load(CONFIG, [f"train.epochs={args.epochs}", f"train.device={args.device}", f"seed={args.seed}"])
    device = resolve_device(cfg.train.device)
    ds = load_dataset(cfg)
    test = ds.test.to(device)
    results = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run:
        vae, _ = train_run(cfg, Path(run) / "run", progress=False)
        results["pyro_vae"] = (elbo_per_datum(vae, test, 1000), time.perf_counter() - started)
    started = time.perf_counter()
    plain = train_plain(ds, args.epochs, device, args.seed)
    results["plain PyTorch"] = (elbo_per_datum(plain, test, 1000), time.perf_counter() - started)
    print(f"IWAE-paper VAE, {args.epochs} epochs, batch 100, Adam 1e-3, dynamic binarization, {device}")
    print(f"{'trainer':<16}{'test ELBO (nats/image)':>24}{'wall s':>10}")
    for name, (elbo, seconds) in results.items():
        print(f"{name:<16}{elbo:>24.2f}{seconds:>10.0f}")
    print(f"difference: {results['pyro_vae'][0] - results['plain PyTorch'][0]:+.2f} nats")


if __name__ == "__main__":
    main()
