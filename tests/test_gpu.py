"""GPU checks; skipped where CUDA is absent (CI has no GPU)."""

import pytest
import torch

from helpers import small_config

from pyro_vae.run import load_run, train_run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")]


def test_training_on_cuda_matches_the_cpu_run_closely(data_dir, tmp_path):
    runs = {}
    for device in ("cpu", "cuda"):
        train_run(small_config(data_dir, f"train.device={device}", "train.epochs=1"), tmp_path / device, progress=False)
        runs[device] = torch.load(tmp_path / device / "checkpoint.pt", weights_only=True, map_location="cpu")
    # the devices draw from different generators, so the runs agree statistically, not bitwise
    cpu, cuda = (runs[d]["state"]["history"][-1]["test_elbo"] for d in ("cpu", "cuda"))
    assert cuda == pytest.approx(cpu, abs=1.0)


def test_a_cuda_checkpoint_loads_on_cpu(data_dir, tmp_path):
    train_run(small_config(data_dir, "train.device=cuda", "train.epochs=1"), tmp_path / "run", progress=False)
    _, vae, _ = load_run(tmp_path / "run", device="cpu")
    assert all(p.device.type == "cpu" for p in vae.parameters())
