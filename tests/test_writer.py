"""A run folder has one writer, and a run that fails before its first checkpoint leaves the folder
as it was: refused second trainers, a lock the kernel releases on SIGKILL, readers that read while
a run trains, and an ``--overwrite`` that cannot leave a mixed folder."""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from helpers import KILL_AT, cli_command, small_config, snapshot
from pyro_vae import cli, writer
from test_faults import nan_at  # noqa: F401 - the fixture, shared

HOLD = "import sys; from pyro_vae import writer; lock = writer.exclusive(sys.argv[1]); lock.__enter__(); print('locked', flush=True); sys.stdin.read()"



@pytest.fixture
def held(tmp_path):
    """A run folder whose writer lock another process holds until the test ends (or kills it)."""

    def hold(folder):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "locked\n"  # the lock is held from here on: no race, no sleep
        holders.append(proc)
        return proc

    holders = []
    yield hold
    for proc in holders:
        proc.kill()
        proc.wait()


@pytest.fixture
def old_run(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "sevens.png").write_bytes(b"a figure the user asked generate for")
    return run


QUICK = ("data.limit=300", "train.epochs=1")  # a new run that ends within seconds


def train_args(data_dir, out, *flags, overrides=QUICK):
    cfg = small_config(data_dir, *overrides)
    config_file = next(folder for folder in out.parents if folder.exists()) / f"{out.name}.toml"
    config_file.write_text(cfg.to_toml())
    return ["train", "--config", str(config_file), "--out", str(out), "--no-progress", *flags]


@pytest.mark.parametrize("flags", [(), ("--resume",), ("--overwrite",)])
def test_a_second_writer_is_refused_naming_the_holder(flags, old_run, data_dir, held, capsys):
    holder = held(old_run)
    before = snapshot(old_run)

    status = cli.main(train_args(data_dir, old_run, *flags))

    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert f"{old_run} is being written by process {holder.pid}" in err and "choose another --out" in err
    assert snapshot(old_run) == before


def test_readers_read_the_last_checkpoint_while_a_writer_holds_the_folder(old_run, held, tmp_path, capsys):
    held(old_run)
    assert cli.main(["generate", str(old_run), "--n", "4", "--out", str(tmp_path / "g.npz")]) == 0
    assert cli.main(["evaluate", str(old_run), "--num-samples", "2", "--limit", "5"]) == 0


def test_the_kernel_releases_a_sigkilled_writers_lock(old_run, data_dir, held, tmp_path):
    holder = held(old_run)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert cli.main(train_args(data_dir, old_run, "--resume", overrides=())) == 0  # the same run: nothing left to train


def test_an_overwrite_that_fails_in_its_first_epoch_leaves_the_old_run_whole(old_run, data_dir, nan_at, capsys):
    before = snapshot(old_run)
    status = cli.main(train_args(data_dir, old_run, "--overwrite", overrides=[*QUICK, 'model.likelihood={type="nan_at", calls=[3]}']))
    assert status == 2 and "the loss became nan at step 3" in capsys.readouterr().err
    assert snapshot(old_run) == before


def test_an_overwrite_killed_in_its_first_epoch_leaves_the_old_run_whole(old_run, data_dir):
    before = snapshot(old_run)
    command = cli_command(*train_args(data_dir, old_run, "--overwrite", overrides=[*QUICK, "model.likelihood=kill_at"]))
    proc = subprocess.run(command, capture_output=True, env={**os.environ, KILL_AT: "3"}, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert snapshot(old_run) == before


def test_an_overwrite_whose_first_checkpoint_cannot_be_written_restores_the_old_run(old_run, data_dir, monkeypatch, capsys):
    from pyro_vae import run as run_module

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(old_run / "checkpoint.pt"))

    before = snapshot(old_run)
    monkeypatch.setattr(run_module, "save_checkpoint", disk_full)
    assert cli.main(train_args(data_dir, old_run, "--overwrite")) == 1
    err = capsys.readouterr().err
    assert "checkpoint.pt: No space left on device" in err and err.count("\n") == 1
    assert snapshot(old_run) == before


def test_an_overwrite_replaces_the_runs_own_files_and_keeps_the_users(old_run, data_dir):
    (old_run / "log_px.csv").write_text("an evaluation of the old run\n")
    (old_run / "evaluations").mkdir(exist_ok=True)
    (old_run / "evaluations" / "log_px-K2-all-seed0.json").write_text("{}")
    assert cli.main(train_args(data_dir, old_run, "--overwrite", overrides=[*QUICK, "seed=5"])) == 0
    assert "seed = 5" in (old_run / "config.toml").read_text()
    assert not (old_run / "log_px.csv").exists() and not (old_run / "evaluations").exists()  # no evaluation of the old run beside the new one
    assert (old_run / "sevens.png").read_bytes() == b"a figure the user asked generate for"
    assert not (old_run / writer.ASIDE).exists()


def test_a_new_run_that_fails_in_its_first_epoch_leaves_nothing(tmp_path, data_dir, nan_at):
    out = tmp_path / "parent" / "new_run"
    assert cli.main(train_args(data_dir, out, overrides=[*QUICK, 'model.likelihood={type="nan_at", calls=[2]}'])) == 2
    assert not (tmp_path / "parent").exists()


def interrupted(run, stage):
    """``run`` as a kill at ``stage`` of the switch to a new run would leave it."""
    if stage == "moving aside":  # some files moved, the rest not yet
        (run / writer.PARTIAL).mkdir()
        for name in ("checkpoint.pt", "samples.png"):
            (run / name).rename(run / writer.PARTIAL / name)
        return
    (run / writer.PARTIAL).mkdir()
    for name in writer.OUTPUTS:
        if (run / name).exists():
            (run / name).rename(run / writer.PARTIAL / name)
    (run / writer.PARTIAL).rename(run / writer.ASIDE)
    (run / "config.toml").write_text("seed = 9\n")  # the new run's first files
    if stage == "new checkpoint written":
        (run / "checkpoint.pt").write_bytes(b"the new run's checkpoint")


@pytest.mark.parametrize("stage", ["moving aside", "new files half written"])
def test_a_switch_killed_before_the_new_checkpoint_is_undone_by_the_next_command(stage, old_run, tmp_path):
    before = snapshot(old_run)
    interrupted(old_run, stage)
    assert cli.main(["generate", str(old_run), "--n", "4", "--out", str(tmp_path / "g.npz")]) == 0  # a reader recovers it
    assert snapshot(old_run) == before


def test_a_switch_killed_after_the_new_checkpoint_keeps_the_new_run(old_run):
    interrupted(old_run, "new checkpoint written")
    writer.recover(old_run)
    assert not (old_run / writer.ASIDE).exists()
    assert (old_run / "checkpoint.pt").read_bytes() == b"the new run's checkpoint"
    assert (old_run / "config.toml").read_text() == "seed = 9\n"
