import os
from pathlib import Path

import pytest
import torch

from pyro_vae import config
from pyro_vae.train import train_run

REPO = Path(__file__).resolve().parents[1]


def mnist_dir():
    return os.environ.get("PYRO_VAE_DATA") or str(REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir():
    root = mnist_dir()
    if not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.fail(f"MNIST not found under {root}; set PYRO_VAE_DATA to the torchvision root (../shared/data)")
    return root


def small_config(data_dir, *overrides):
    """A config that trains in seconds: 2000 MNIST training images, 500 test images, small nets."""
    base = [
        f"data.dir={data_dir!r}".replace("'", '"'),
        "data.limit=2000",
        "data.test_limit=500",
        "model.latent_dim=8",
        "model.encoder.hidden=[64]",
        "model.decoder.hidden=[64]",
        "train.epochs=2",
        "train.device=cpu",
        # compiling costs seconds per run; tests/test_step.py covers the compiled step and compiled runs
        "train.compile=off",
    ]
    return config.load(None, base + list(overrides))


@pytest.fixture(scope="session")
def trained_run(data_dir, tmp_path_factory):
    """One small unconditional run shared by the tests that only read a run folder."""
    out = tmp_path_factory.mktemp("run")
    train_run(small_config(data_dir), out, progress=False)
    return out


@pytest.fixture(scope="session")
def trained_cvae_run(data_dir, tmp_path_factory):
    """One small conditional run shared by the tests that only read a run folder."""
    out = tmp_path_factory.mktemp("cvae_run")
    train_run(small_config(data_dir, "model.conditional=true"), out, progress=False)
    return out


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
