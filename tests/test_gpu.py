"""GPU checks; skipped where CUDA is absent (CI has no GPU)."""

import pytest
import torch

from helpers import assert_same_weights, small_config

from pyro_vae import VAE, noise
from pyro_vae.objectives import make_objective
from pyro_vae.run import load_run, train_run
from pyro_vae.step import Step

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


def test_the_cuda_graph_step_and_the_traced_step_equal_the_eager_cuda_step():
    vae = VAE(784, 8, encoder={"hidden": [64]}, decoder={"hidden": [64]}, num_classes=10).cuda()
    x, y = torch.rand(100, 784, device="cuda"), torch.arange(100, device="cuda") % 10
    steps = {mode: Step(vae, make_objective("elbo"), dynamic_binarization=True, compile=mode) for mode in ("off", "on")}
    # auto over a run of 4 steps: all of them traced (and timed)
    steps["traced"] = Step(vae, make_objective("elbo"), dynamic_binarization=True, compile="auto", steps=4)
    # replays after the graph is recorded must take each step's new noise and KL weight
    for i in range(4):
        results = {}
        for mode, step in steps.items():
            loss = step(x, y, noise.StepNoise(0, i, 100, slice(None), "cuda"), kl_weight=0.2 * (i + 1))
            results[mode] = loss.item(), [p.grad.clone() for p in vae.parameters()]
        assert steps["on"].compiled and steps["traced"].path == "traced"
        for mode in ("on", "traced"):
            assert results[mode][0] == pytest.approx(results["off"][0], rel=1e-4)
            for graph, eager in zip(results[mode][1], results["off"][1]):
                assert torch.allclose(graph, eager, rtol=1e-3, atol=1e-4)
    assert steps["on"].compilations == 1 and steps["traced"].compilations == 0


def test_a_compiled_cuda_run_resumes_exactly(data_dir, tmp_path):
    overrides = ["train.device=cuda", "train.compile=on", "data.limit=500"]
    straight, _ = train_run(small_config(data_dir, *overrides), tmp_path / "straight", progress=False)
    train_run(small_config(data_dir, *overrides, "train.epochs=1"), tmp_path / "resumed", progress=False)
    resumed, _ = train_run(small_config(data_dir, *overrides), tmp_path / "resumed", resume=True, progress=False)
    assert_same_weights(straight, resumed)
