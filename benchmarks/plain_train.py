"""The IWAE-paper VAE (784-200-200-50 tanh, Bernoulli) trained in plain PyTorch, as a strong
practitioner writes it: the whole dataset on the device, torch.bernoulli for dynamic
binarization, the analytic KL to N(0, I), the decoder's output bias at the logit of the mean
pixel, one torch.optim.Adam, the running loss summed on the device. Each epoch does the work
`pyro-vae train` does (shuffle, binarize, steps, the single-sample test ELBO) and prints
`epoch E: ... S s`; the process ends by saving the weights. Standalone: no pyro_vae import.

``--compile``: what a practitioner adds in 2026, the loss (forward and backward, through AOT
autograd) under ``torch.compile``; the test ELBO stays eager, as pyro-vae's does, so that it
compiles no second graph. ``--adam``: torch's default multi-tensor Adam (``foreach``), the
``fused`` kernel, or ``compiled``, its step under ``torch.compile`` too (PyTorch's recipe
"Compiling the optimizer").

    python benchmarks/plain_train.py --data ../shared/data [--epochs 2] [--batch-size 100] [--device cpu|cuda] [--compile] [--adam foreach|fused|compiled]
"""

import argparse
import math
import os
import tempfile
import time

import torch
from torch import nn
from torchvision.datasets import MNIST


def load(root, device):
    train, test = (MNIST(root, train=split, download=False) for split in (True, False))
    return [(ds.data.reshape(len(ds.data), -1).float() / 255.0).to(device) for ds in (train, test)]


def mlp(sizes):
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def negative_elbo(encoder, decoder, x):
    """-ELBO summed over the batch: Bernoulli reconstruction, closed-form KL to N(0, I)."""
    loc, log_scale = encoder(x).chunk(2, dim=-1)
    z = loc + log_scale.exp() * torch.randn_like(loc)
    reconstruction = nn.functional.binary_cross_entropy_with_logits(decoder(z), x, reduction="sum")
    kl = 0.5 * (loc.square() + (2 * log_scale).exp() - 1 - 2 * log_scale).sum()
    return reconstruction + kl


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("PYRO_VAE_DATA", "../shared/data"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="train on the first N images only (0: all 60,000)")
    parser.add_argument("--compile", action="store_true", help="the training loss under torch.compile")
    parser.add_argument("--adam", default="foreach", choices=("foreach", "fused", "compiled"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    train_x, test_x = load(args.data, device)
    train_x = train_x[: args.limit or None]
    test_x = torch.bernoulli(test_x)  # the test set is binarized once
    encoder, decoder = mlp([784, 200, 200, 100]).to(device), mlp([50, 200, 200, 784]).to(device)
    with torch.no_grad():
        mean = train_x.mean(0).clamp(1e-3, 1 - 1e-3)
        decoder[-1].bias.copy_(torch.log(mean) - torch.log1p(-mean))
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=args.lr, fused=args.adam == "fused")
    optimizer_step = torch.compile(optimizer.step) if args.adam == "compiled" else optimizer.step
    train_loss = torch.compile(negative_elbo) if args.compile else negative_elbo
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        total = torch.zeros((), device=device)
        order = torch.randperm(len(train_x), device=device)
        for start in range(0, len(train_x), args.batch_size):
            loss = train_loss(encoder, decoder, torch.bernoulli(train_x[order[start : start + args.batch_size]]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer_step()
            total += loss.detach()
        with torch.no_grad():
            test = sum(negative_elbo(encoder, decoder, test_x[i : i + 1000]) for i in range(0, len(test_x), 1000))
        train_elbo, test_elbo = -total.item() / len(train_x), -test.item() / len(test_x)
        print(f"epoch {epoch}: train ELBO {train_elbo:.2f}, test ELBO {test_elbo:.2f} nats/datum, {time.perf_counter() - started:.3f} s", flush=True)
        assert math.isfinite(train_elbo)
    with tempfile.TemporaryDirectory() as out:
        torch.save({"encoder": encoder.state_dict(), "decoder": decoder.state_dict(), "optimizer": optimizer.state_dict()}, os.path.join(out, "checkpoint.pt"))


if __name__ == "__main__":
    main()
