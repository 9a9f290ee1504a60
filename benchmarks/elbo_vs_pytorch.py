"""Test ELBO of the IWAE-paper VAE trained by `pyro-vae train` (examples/configs/mnist_vae.toml)
against a plain-PyTorch VAE written the way a careful practitioner writes one, side by side.

The plain-PyTorch yardstick shares nothing with pyro_vae but the data files; it is not built
from pyro_vae's networks, so the package's choices cannot leak into it:

- encoder 784-200-200-100 and decoder 50-200-200-784, tanh, ``nn.Linear``'s own initialization;
  the encoder's 100 outputs are the mean and the log-variance of q(z|x), scale = exp(logvar / 2);
- the decoder's output bias starts at the logit of the mean training pixel (clamped to
  [1e-3, 1 - 1e-3]), as in Burda et al.'s code;
- loss per batch: binary cross-entropy with logits (summed over pixels) plus the analytic
  KL(q(z|x) || N(0, I)), averaged over the batch; one reparameterized sample of z;
- Adam, learning rate 1e-3, batch 100, a fresh ``torch.randperm`` shuffle every epoch, dynamic
  binarization with ``torch.bernoulli`` on every batch;
- scored like pyro_vae: the ELBO per image (one sample of z, analytic KL) on the full 10,000-image
  test set, binarized once with the same seeded draw pyro_vae's evaluation uses.

pyro_vae's model is trained through ``train_run`` exactly as ``pyro-vae train`` does and scored by
``pyro_vae.train.elbo_per_datum`` (one sample, Monte Carlo KL; the same quantity in expectation).
Target: within 1 nat. ``--ablation`` instead trains pyro_vae once per row of ``ABLATION``, each row
a set of config overrides that turns one of the causes found in issue 11 back to its old setting,
and prints the test ELBO and active units of each (see docs/benchmarks.md).

    python benchmarks/elbo_vs_pytorch.py [--epochs 10] [--device cpu] [--run RUN_DIR]
    python benchmarks/elbo_vs_pytorch.py --ablation [--rows normal,vamp,mixture] [--epochs 10]
"""

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from pyro_vae import config as config_lib
from pyro_vae.data import load_dataset
from pyro_vae.explore import active_units, encode_layers_split
from pyro_vae.distributed import resolve_device
from pyro_vae.run import load_run, train_run
from pyro_vae.train import elbo_per_datum

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "mnist_vae.toml"
LATENT = 50
MIXTURE = 'model.prior={type="mixture", components=10}'
VAMP = 'model.prior={type="vamp", components=500}'

# (label, overrides): the first row of each group is today's default for that prior, each later row
# puts one cause back as it was before issue 11
ABLATION = {
    "normal": [
        ("normal prior, defaults", []),
        ("  decoder output bias at PyTorch's init (old)", ["model.decoder.init_bias=default"]),
        ("  Monte Carlo KL, Trace_ELBO (old)", ["train.objective=elbo"]),
        ("  both old: the default before issue 11", ["model.decoder.init_bias=default", "train.objective=elbo"]),
    ],
    "mixture": [
        ("mixture of 10, defaults", [MIXTURE]),
        ("  means spread N(0, 1) (old)", ['model.prior={type="mixture", components=10, init_std=1.0}']),
        ("  decoder output bias at PyTorch's init (old)", [MIXTURE, "model.decoder.init_bias=default"]),
        ("  both old: the mixture before issue 11", ['model.prior={type="mixture", components=10, init_std=1.0}', "model.decoder.init_bias=default"]),
    ],
    "vamp": [
        ("VampPrior, 500 pseudo-inputs, defaults", [VAMP]),
        ("  decoder output bias at PyTorch's init (old)", [VAMP, "model.decoder.init_bias=default"]),
    ],
}


class PlainVAE(nn.Module):
    def __init__(self, pixel_mean):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 2 * LATENT))
        self.decoder = nn.Sequential(nn.Linear(LATENT, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 784))
        p = pixel_mean.clamp(1e-3, 1 - 1e-3)
        with torch.no_grad():
            self.decoder[-1].bias.copy_(torch.log(p / (1 - p)))

    def elbo(self, x):
        """One-sample ELBO per datum, shape (B,): -BCE(x, decoder(z)) - KL(q(z|x) || N(0, I))."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        log_px_z = -nn.functional.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
        return log_px_z - kl


def train_plain(train_x, epochs, seed):
    torch.manual_seed(seed)
    vae = PlainVAE(train_x.mean(0))
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(train_x))
        for start in range(0, len(train_x), 100):
            loss = -vae.elbo(torch.bernoulli(train_x[order[start : start + 100]])).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return vae


@torch.no_grad()
def plain_test_elbo(vae, test_x, seed):
    torch.manual_seed(seed)
    return sum(vae.elbo(test_x[i : i + 1000]).sum().item() for i in range(0, len(test_x), 1000)) / len(test_x)


def train_pyro_vae(overrides, epochs, device, seed):
    """``(test ELBO, active units)`` of a fresh ``pyro-vae train`` run of mnist_vae.toml with ``overrides``."""
    cfg = config_lib.load(CONFIG, [f"train.epochs={epochs}", f"train.device={device}", f"seed={seed}", *overrides])
    with tempfile.TemporaryDirectory() as run:
        vae, _ = train_run(cfg, Path(run) / "run", progress=False)
    test = load_dataset(cfg).test.to(vae.device)
    return elbo_per_datum(vae, test, 1000), active_units(encode_layers_split(vae, test)["z"][0])[0]


def score_run(run_dir, device):
    """``(test ELBO, active units)`` of a finished ``pyro-vae train`` run folder."""
    cfg, vae, _ = load_run(run_dir, device)
    test = load_dataset(cfg).test.to(device)
    return elbo_per_datum(vae, test, 1000), active_units(encode_layers_split(vae, test)["z"][0])[0]


def compare(args, device):
    cfg = config_lib.load(CONFIG, [f"seed={args.seed}"])
    ds = load_dataset(cfg)
    plain = train_plain(ds.train.x, args.epochs, args.seed)
    plain_elbo = plain_test_elbo(plain, ds.test.x, args.seed)
    ours, units = score_run(args.run, device) if args.run else train_pyro_vae([], args.epochs, device, args.seed)
    print(f"IWAE-paper VAE, {args.epochs} epochs, batch 100, Adam 1e-3, dynamic binarization; test ELBO on all {len(ds.test)} test images")
    print(f"{'trainer':<34}{'test ELBO (nats/image)':>24}")
    print(f"{'plain PyTorch (see docstring)':<34}{plain_elbo:>24.2f}")
    print(f"{'pyro-vae train, mnist_vae.toml':<34}{ours:>24.2f}")
    print(f"difference: {ours - plain_elbo:+.2f} nats (pyro_vae minus plain; {units} active units)")


def ablation(args, device):
    print(f"IWAE-paper VAE, {args.epochs} epochs; test ELBO on the 10,000 test images; active units: Cov_x(E_q[z_j]) > 0.01")
    print(f"{'row':<60}{'test ELBO':>10}{'vs default':>12}{'active':>8}")
    for group in args.rows.split(","):
        baseline = None
        for label, overrides in ABLATION[group]:
            elbo, units = train_pyro_vae(overrides, args.epochs, device, args.seed)
            baseline = elbo if baseline is None else baseline
            print(f"{label:<60}{elbo:>10.2f}{elbo - baseline:>+12.2f}{units:>8}", flush=True)
    print("overrides per row: " + "; ".join(f"{label.strip()}: {' '.join(o) or '-'}" for g in args.rows.split(",") for label, o in ABLATION[g]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", help="score this finished run of mnist_vae.toml (trained with --epochs epochs) instead of training one")
    parser.add_argument("--ablation", action="store_true", help="one row per cause instead of the side-by-side comparison")
    parser.add_argument("--rows", default=",".join(ABLATION), help=f"ablation groups, comma-separated, from: {', '.join(ABLATION)}")
    args = parser.parse_args()
    device = resolve_device(args.device, option="--device")
    (ablation if args.ablation else compare)(args, device)


if __name__ == "__main__":
    main()
