"""A small MNIST classifier, used only to judge what a conditional VAE draws.

    python benchmarks/classifier.py [--out benchmarks/out/classifier.pt] [--epochs 3]

Trains a two-convolution CNN on the 60000 MNIST training images (from ``PYRO_VAE_DATA`` or
``--data``), prints the accuracy on the 10000 test images, and saves the weights as a plain
``state_dict`` (load them with :func:`load_classifier`). The inputs are grey pixels in [0, 1],
the same scale as a VAE's decoder mean E[x | z, y], so generated digits are classified as drawn.
"""

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from pyro_vae.data import data_root, load_mnist

DEFAULT_PATH = Path(__file__).resolve().parent / "out" / "classifier.pt"


def make_classifier():
    """28x28 -> conv5 (32) -> pool -> conv5 (64) -> pool -> 128 -> 10 logits; about 0.45M parameters."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25),
        nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(128, 10),
    )


def load_classifier(path=DEFAULT_PATH):
    net = make_classifier()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


@torch.no_grad()
def predict(net, x, batch_size=1000):
    """The class with the highest logit for each row of ``x`` (N, 784)."""
    return torch.cat([net(x[i : i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])


def train(ds, epochs, seed, batch_size=100, lr=1e-3):
    torch.manual_seed(seed)
    net = make_classifier()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    # one cosine cycle: the last epoch runs at small step sizes, which buys the last few tenths of a percent
    steps = epochs * (len(ds.train) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr * 2, total_steps=steps)
    for epoch in range(epochs):
        net.train()
        started = time.perf_counter()
        for idx in torch.randperm(len(ds.train)).split(batch_size):
            if len(idx) < batch_size:
                continue
            loss = nn.functional.cross_entropy(net(ds.train.x[idx]), ds.train.y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        net.eval()
        accuracy = (predict(net, ds.test.x) == ds.test.y).float().mean().item()
        print(f"epoch {epoch + 1}/{epochs}: test accuracy {accuracy:.2%} ({time.perf_counter() - started:.0f}s)")
    return net, accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH, help=f"where to save the state_dict (default {DEFAULT_PATH})")
    parser.add_argument("--data", default="", help="torchvision MNIST root (default: $PYRO_VAE_DATA)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the default leaves a core to others)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    net, accuracy = train(load_mnist(data_root(args.data)), args.epochs, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.out)
    print(f"test accuracy {accuracy:.2%} on the 10000 MNIST test images; weights saved to {args.out}")


if __name__ == "__main__":
    main()
