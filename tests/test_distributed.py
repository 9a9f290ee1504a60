"""Data-parallel training under torchrun: two CPU processes (gloo) match one process."""

import subprocess
import sys

import pytest
import torch

from helpers import small_config
from pyro_vae.distributed import World
from pyro_vae.run import train_run

OVERRIDES = ["data.limit=400", "data.test_limit=200", "train.batch_size=50", "train.epochs=2", "model.latent_dim=4",
             "model.encoder.hidden=[32]", "model.decoder.hidden=[32]"]


def torchrun(nproc, argv, **kwargs):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "pyro_vae", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)


def set_args(data_dir, overrides):
    args = []
    for item in [f'data.dir="{data_dir}"', "train.device=cpu", "train.compile=off", *overrides]:
        args += ["--set", item]
    return args


SEMI_SUPERVISED = ["model.conditional=true", "data.labelled=20", "train.labelled_batch_size=10"]


# dreg on two layers: the IWAE bound with the gradient hooks and the replayed guide, under DistributedDataParallel
# mean_field under auto: 16 steps are too few for compiling to pay, so the traced step trains it
@pytest.mark.parametrize("objective, compile, extra", [("elbo", "on", []), ("dreg", "off", ["model.layers=[{latent_dim=2, hidden=[8]}]"]),
                                                     ("mean_field", "auto", []), ("elbo", "auto", SEMI_SUPERVISED)],
                         ids=["elbo-compiled", "dreg-eager-two-layers", "mean-field-traced", "semi-supervised"])
def test_two_processes_match_one_with_the_same_global_batch(data_dir, tmp_path, objective, compile, extra):
    # compiled or traced, the step all-reduces the gradients itself; eager, DistributedDataParallel does
    overrides = OVERRIDES + [f"train.objective={objective}", f"train.num_particles={1 if objective == 'elbo' else 3}", f"train.compile={compile}", *extra]
    train_run(small_config(data_dir, *overrides), tmp_path / "one", progress=False)
    result = torchrun(2, ["train", "--out", str(tmp_path / "two"), "--no-progress", *set_args(data_dir, overrides)])
    assert result.returncode == 0, result.stderr[-2000:]
    if objective == "mean_field":
        assert "train.compile = auto: training traced, not compiled" in result.stderr
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert one["state"]["step"] == two["state"]["step"] == 16
    # the semi-supervised classifier's gradient is q(y|x) (cost - its mean) over the enumerated classes, a difference of
    # costs of hundreds of nats: its rounding (1e-11 or so where a pixel is rarely on) differs with the summation order,
    # and Adam divides a gradient that small by sqrt(v) + 1e-8, which turns it into steps of up to 1e-6 per epoch
    atol = 1e-5 if extra == SEMI_SUPERVISED else 1e-6
    for name, tensor in one["model"].items():
        assert torch.allclose(tensor, two["model"][name], rtol=1e-4, atol=atol), name
    # the reported test ELBO covers the whole test set, reduced over both processes
    assert one["state"]["history"][-1]["test_elbo"] == pytest.approx(two["state"]["history"][-1]["test_elbo"], abs=0.5)
    assert one["state"]["history"][-1]["train_elbo"] == pytest.approx(two["state"]["history"][-1]["train_elbo"], rel=1e-5)


def test_only_the_main_process_writes_and_prints(data_dir, tmp_path):
    result = torchrun(2, ["train", "--out", str(tmp_path / "run"), *set_args(data_dir, OVERRIDES)])
    assert result.returncode == 0, result.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["checkpoint.pt", "config.toml", "loss.png", "metrics.csv", "reconstructions.png", "samples.png"]
    assert (tmp_path / "run" / "metrics.csv").read_text().count("epoch,step") == 1
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 3
    assert result.stdout.count("wrote ") == 1
    assert result.stdout.count("epoch 2: train ELBO") == 1 and "epoch 2: train ELBO" not in result.stderr
    assert "Warning" not in result.stderr, result.stderr  # e.g. DDP's deprecation notice, once per process


def test_resume_under_torchrun_continues_the_run(data_dir, tmp_path):
    args = ["train", "--out", str(tmp_path / "run"), "--no-progress", *set_args(data_dir, OVERRIDES)]
    first = torchrun(2, args + ["--set", "train.epochs=1"])
    assert first.returncode == 0, first.stderr[-2000:]
    second = torchrun(2, args + ["--resume"])
    assert second.returncode == 0, second.stderr[-2000:]
    train_run(small_config(data_dir, *OVERRIDES), tmp_path / "one", progress=False)
    resumed = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    straight = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    assert resumed["state"]["epoch"] == 2
    for name, tensor in straight["model"].items():
        assert torch.allclose(tensor, resumed["model"][name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("n, size", [(100, 2), (101, 2), (7, 3), (5, 1)])
def test_shards_cover_the_batch_once(n, size):
    rows = [World(rank, size).shard(n) for rank in range(size)]
    covered = [i for r in rows for i in range(n)[r]]
    assert covered == list(range(n))
