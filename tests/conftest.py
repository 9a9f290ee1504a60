from pathlib import Path

import pytest
import torch

from helpers import mnist_dir, small_config
from pyro_vae.run import train_run

@pytest.fixture(scope="session")
def data_dir():
    root = mnist_dir()
    if not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.fail(f"MNIST not found under {root}; set PYRO_VAE_DATA to the torchvision root (../shared/data)")
    return root


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
