"""Faults: a killed run resumes exactly, a NaN loss stops cleanly (or is skipped), a checkpoint
carrying pickled code is refused without running it, and a failed write leaves the old file.
"""

import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from helpers import KILL_AT, cli_command, small_config
from pyro_vae import cli, files
from pyro_vae.likelihoods import LIKELIHOODS, Bernoulli
from pyro_vae.run import load_checkpoint, load_run, train_run


def weights(run):
    return load_checkpoint(run / "checkpoint.pt")["model"]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path, data_dir):
    cfg = small_config(data_dir, "train.epochs=4", "model.likelihood=kill_at")
    config_file = tmp_path / "config.toml"
    config_file.write_text(cfg.to_toml())
    killed = tmp_path / "killed"
    command = cli_command("train", "--config", str(config_file), "--out", str(killed), "--no-progress")
    steps = math.ceil(cfg.data.limit / cfg.train.batch_size)

    # the middle of epoch 3: two checkpoints written, the third not yet
    proc = subprocess.run(command, capture_output=True, env={**os.environ, KILL_AT: str(2 * steps + steps // 2)}, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    _, _, payload = load_run(killed)  # the last complete checkpoint reads back
    assert payload["state"]["epoch"] == 2 and payload["state"]["step"] == 2 * steps

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    straight = tmp_path / "straight"
    train_run(cfg, straight, progress=False)

    final, reference = weights(killed), weights(straight)
    assert final.keys() == reference.keys()
    for name in reference:
        assert torch.equal(final[name], reference[name]), name
    assert (killed / "metrics.csv").read_text().count("\n") == 1 + cfg.train.epochs


class NaNAt(Bernoulli):
    """A Bernoulli likelihood whose log-likelihood is NaN on the given training calls (counted
    from 1; evaluation calls do not count): a loss that blows up at a known step."""

    name = "nan_at"

    def __init__(self, input_dim, *, calls=()):
        super().__init__(input_dim)
        self.bad, self.count = set(calls), 0

    def forward(self, out):
        if self.training:
            self.count += 1
            if self.count in self.bad:
                out = out * math.nan
        return super().forward(out)


@pytest.fixture
def nan_at(monkeypatch):
    monkeypatch.setitem(LIKELIHOODS._classes, NaNAt.name, NaNAt)


def nan_config(data_dir, calls, *overrides):
    return small_config(data_dir, f'model.likelihood={{type="nan_at", calls={calls}}}', *overrides)


def steps_per_epoch(cfg):
    return math.ceil(cfg.data.limit / cfg.train.batch_size)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(nan_at, data_dir, tmp_path, capsys, recwarn):
    epoch_steps = steps_per_epoch(small_config(data_dir))
    bad_step = epoch_steps + 4  # in epoch 2, after the first checkpoint
    cfg = nan_config(data_dir, [bad_step])
    config_file = tmp_path / "config.toml"
    config_file.write_text(cfg.to_toml())
    run = tmp_path / "run"

    status = cli.main(["train", "--config", str(config_file), "--out", str(run), "--no-progress"])

    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert [str(w.message) for w in recwarn] == []  # run as a command, a warning would be more lines on stderr
    assert f"the loss became nan at step {bad_step} (epoch 2)" in err
    assert "last good checkpoint is kept" in err and "lower train.lr" in err and "likelihood scale" in err
    _, vae, payload = load_run(run)
    assert payload["state"]["epoch"] == 1 and payload["state"]["step"] == epoch_steps
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    assert (run / "metrics.csv").read_text().count("\n") == 2  # header and epoch 1


@pytest.mark.parametrize("model", [[], ["model.conditional=true", "data.labelled=20", "train.labelled_batch_size=10"]],
                         ids=["vae", "semi-supervised"])
def test_nan_policy_skip_skips_and_counts_the_bad_batches(model, nan_at, data_dir, tmp_path):
    bad_calls = [3, 5, 12]
    cfg = nan_config(data_dir, bad_calls, "train.nan_policy=skip", "train.epochs=1", *model)

    vae, state = train_run(cfg, tmp_path / "run", progress=False)

    assert state.skipped == len(bad_calls)
    assert state.epoch == cfg.train.epochs
    assert state.step == cfg.train.epochs * steps_per_epoch(cfg) - len(bad_calls)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["state"]["skipped"] == len(bad_calls)
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    assert all(math.isfinite(row["train_elbo"]) for row in state.history)


class OpensAFile:
    """Unpickling this calls ``open(path, "w")``: code that runs merely by loading the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("command", ["generate", "evaluate", "encode", "explore", "resume"])
def test_checkpoint_carrying_a_pickled_object_is_refused_and_its_code_never_runs(command, trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = run / "checkpoint.pt"
    marker = tmp_path / "code_ran"
    payload = load_checkpoint(ckpt)
    payload["note"] = OpensAFile(marker)
    torch.save(payload, ckpt)
    argv = {
        "generate": ["generate", str(run), "--out", str(tmp_path / "x.png")],
        "evaluate": ["evaluate", str(run), "--num-samples", "2"],
        "encode": ["encode", str(run), "--out", str(tmp_path / "x.npz")],
        "explore": ["explore", str(run), "--out", str(tmp_path / "figures")],
        "resume": ["train", "--out", str(run), "--resume", "--config", str(run / "config.toml")],
    }[command]

    status = cli.main(argv)

    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert f"refusing to load {ckpt}: it contains pickled Python objects" in err
    assert not marker.exists()
    assert not any((tmp_path / name).exists() for name in ("x.png", "x.npz", "figures"))
    torch.load(ckpt, weights_only=False)  # what an unsafe loader would do: the payload is live
    assert marker.exists()


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_checkpoint_write_keeps_the_previous_file_and_no_temporary(failing, tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    files.save_tensors(path, {"w": torch.zeros(3)})
    before = path.read_bytes()

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, failing, disk_full)
        with pytest.raises(OSError, match="No space left"):
            files.save_tensors(path, {"w": torch.ones(3)})

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(3))


def test_run_files_follow_the_umask(tmp_path):
    from pyro_vae.files import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


def test_a_full_disk_is_one_line_not_a_traceback(trained_run, tmp_path, monkeypatch, capsys):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # every file the package writes is fsynced before it is renamed into place
    assert cli.main(["generate", str(trained_run), "--out", str(tmp_path / "g.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
