"""Training end to end: run folder contents, metrics, checkpoints, data modes, generation."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from helpers import assert_same_weights, readable_png, record_grids, small_config
from pyro_vae import data
from pyro_vae import config as config_lib
from pyro_vae.cli import main
from pyro_vae.data import load_dataset
from pyro_vae.run import build_vae, load_run, train_run, write_run_figures
from pyro_vae.train import elbo_per_datum


def read_metrics(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_a_run_folder_has_every_file_and_a_row_per_epoch(trained_run):
    for name in ("config.toml", "checkpoint.pt", "metrics.csv", "samples.png", "reconstructions.png", "loss.png"):
        assert (trained_run / name).stat().st_size > 0, name
    rows = read_metrics(trained_run)
    assert list(rows[0]) == ["epoch", "step", "train_elbo", "test_elbo", "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["step"]) for r in rows] == [20, 40]  # 2000 images / batch 100
    assert all(float(r["test_elbo"]) < 0 for r in rows)  # log-probabilities of binary images
    assert float(rows[1]["test_elbo"]) > float(rows[0]["test_elbo"])


def test_training_beats_the_untrained_model(trained_run):
    cfg, vae, _ = load_run(trained_run)
    ds = load_dataset(cfg)
    trained = elbo_per_datum(vae, ds.test, 500)
    untrained = elbo_per_datum(build_vae(cfg, ds.input_dim, ds.num_classes), ds.test, 500)
    assert trained > untrained + 50
    assert trained == pytest.approx(float(read_metrics(trained_run)[-1]["test_elbo"]), abs=1e-3)


def test_config_toml_is_fully_resolved_and_names_the_data(trained_run, data_dir):
    cfg = config_lib.load(trained_run / "config.toml")
    assert cfg == load_run(trained_run)[0]
    assert cfg.model.latent_dim == 8 and cfg.data.limit == 2000
    assert cfg.data.dir == str(Path(data_dir).resolve())  # absolute: any shell finds the same data


def test_a_run_finds_its_data_from_a_shell_that_points_elsewhere(trained_run, tmp_path, monkeypatch, capsys):
    shutil.copytree(trained_run, tmp_path / "run")
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "nowhere"))
    assert main(["evaluate", str(tmp_path / "run"), "--num-samples", "2", "--limit", "5"]) == 0
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--no-progress", "--config", str(trained_run / "config.toml"),
                 "--set", 'data.dir=""', "--set", "train.epochs=3"]) == 0  # no location given: the run's own
    assert [int(row["epoch"]) for row in read_metrics(tmp_path / "run")] == [1, 2, 3]
    assert not (tmp_path / "nowhere").exists()


def test_progress_in_a_log_is_one_line_per_epoch_and_no_bar(data_dir, tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "run"), "--set", f'data.dir="{data_dir}"', "--set", "data.limit=300",
            "--set", "data.test_limit=100", "--set", "train.epochs=2", "--set", "train.device=cpu"]
    assert main(argv) == 0  # capsys's streams are not terminals, as a redirected log is not
    out, err = capsys.readouterr()
    assert "\r" not in out + err and "it/s" not in err
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("epoch")] == ["epoch 1", "epoch 2"]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("pyro-vae 0.")


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_same_model(trained_run):
    payload = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    assert isinstance(payload["config"], str) and payload["state"]["epoch"] == 2
    pyro.clear_param_store()  # loading must not depend on Pyro's global param store
    _, vae, _ = load_run(trained_run)
    for name, tensor in vae.state_dict().items():
        assert torch.equal(tensor, payload["model"][name])


def test_run_figures_are_labelled_grids_a_person_can_read(trained_run, tmp_path, monkeypatch):
    cfg, vae, _ = load_run(trained_run)
    drawn = record_grids(monkeypatch)
    write_run_figures(tmp_path, vae, load_dataset(cfg), read_metrics(trained_run))
    samples, reconstructions = drawn
    assert (samples["name"], samples["n"], samples["nrow"]) == ("samples.png", 64, 8)
    assert (reconstructions["name"], reconstructions["n"], reconstructions["nrow"]) == ("reconstructions.png", 64, 8)
    assert reconstructions["row_labels"] == ["data", "reconstruction"] * 4
    for name in ("samples.png", "reconstructions.png", "loss.png"):
        assert readable_png(tmp_path / name), name


def test_generate_writes_png_and_npz(trained_run, tmp_path, monkeypatch):
    assert main(["generate", str(trained_run), "--n", "12", "--out", str(tmp_path / "g.npz")]) == 0
    arrays = np.load(tmp_path / "g.npz")
    assert arrays["images"].shape == (12, 28, 28) and arrays["images"].dtype == np.float32
    assert 0 <= arrays["images"].min() and arrays["images"].max() <= 1
    assert arrays["labels"].shape == (12,) and arrays["labels"].dtype == np.int64
    assert main(["generate", str(trained_run), "--n", "12", "--seed", "0", "--out", str(tmp_path / "g2.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "g2.npz")["images"], arrays["images"])
    drawn = record_grids(monkeypatch)
    assert main(["generate", str(trained_run), "--n", "16", "--out", str(tmp_path / "g.png")]) == 0
    assert [(grid["n"], grid["nrow"]) for grid in drawn] == [(16, 8)]  # two rows of eight
    assert readable_png(tmp_path / "g.png")


def test_max_steps_stops_mid_epoch(data_dir, tmp_path):
    cfg = small_config(data_dir, "train.max_steps=7", "train.epochs=5")
    _, state = train_run(cfg, tmp_path / "run", progress=False)
    assert (state.step, state.epoch) == (7, 1)


@pytest.mark.parametrize("objective, particles", [("mean_field", 1), ("iwae", 5), ("elbo", 3)])
def test_objectives_train_from_the_config(data_dir, tmp_path, objective, particles):
    cfg = small_config(data_dir, f"train.objective={objective}", f"train.num_particles={particles}", "train.epochs=1")
    vae, _ = train_run(cfg, tmp_path / "run", progress=False)
    ds = load_dataset(cfg)
    untrained = elbo_per_datum(build_vae(cfg, ds.input_dim, ds.num_classes), ds.test, 500)
    assert float(read_metrics(tmp_path / "run")[0]["test_elbo"]) > untrained + 50


def test_static_binarization_is_one_fixed_draw(data_dir):
    cfg = small_config(data_dir, "data.binarize=static")
    a, b = (load_dataset(cfg) for _ in range(2))
    assert torch.equal(a.train.x, b.train.x) and set(a.train.x.unique().tolist()) == {0.0, 1.0}
    dynamic = load_dataset(small_config(data_dir))
    assert dynamic.train.x.unique().numel() > 2  # grey: drawn afresh for every batch
    assert torch.equal(dynamic.test.x, load_dataset(small_config(data_dir)).test.x)
    assert set(dynamic.test.x.unique().tolist()) == {0.0, 1.0}


def test_no_binarization_keeps_grey_levels(data_dir):
    ds = load_dataset(small_config(data_dir, "data.binarize=none", "model.likelihood=continuous_bernoulli"))
    raw = data.load_mnist(data_dir)
    assert torch.equal(ds.test.x, raw.test.x[:500])


def test_user_arrays_train_through_the_cli(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.random((300, 36)) < 0.3).astype(np.float32)
    np.savez(tmp_path / "mine.npz", x=x, y=rng.integers(0, 3, 300))
    argv = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--set", f'data.path="{tmp_path / "mine.npz"}"',
            "--set", "data.binarize=none", "--set", "model.latent_dim=2", "--set", "model.conditional=true",
            "--set", "train.epochs=1", "--set", "train.batch_size=50", "--set", "train.compile=off"]
    assert main(argv) == 0
    _, vae, payload = load_run(tmp_path / "run")
    assert (vae.input_dim, vae.num_classes, tuple(payload["image_shape"])) == (36, 3, (6, 6))
    assert len(read_metrics(tmp_path / "run")) == 1


def test_user_npy_holds_out_a_test_split(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((50, 5)).astype(np.float32))
    ds = data.load_arrays(tmp_path / "x.npy")
    assert (len(ds.train), len(ds.test), ds.num_classes) == (45, 5, None)


def test_training_on_tensors_from_python():
    from pyro_vae import VAE, UserError, fit_tensors

    torch.manual_seed(0)
    centers = torch.rand(3, 30)
    labels = torch.randint(0, 3, (600,))
    x = torch.bernoulli(centers[labels])
    vae = VAE(input_dim=30, latent_dim=2, encoder={"hidden": [32]}, decoder={"hidden": [32]}, num_classes=3)
    state = fit_tensors(vae, x, labels, overrides=["train.epochs=3", "train.batch_size=50", "train.compile=off"], progress=False)
    assert [row["epoch"] for row in state.history] == [1, 2, 3] and state.step == 3 * 11  # 540 rows / 50
    assert state.history[-1]["test_elbo"] > state.history[0]["test_elbo"]
    with pytest.raises(UserError, match="labels"):
        fit_tensors(vae, x, overrides=["train.epochs=1", "train.compile=off"], progress=False)
    with pytest.raises(UserError, match="binary"):
        fit_tensors(VAE(input_dim=30, latent_dim=2), torch.rand(100, 30), overrides=["train.epochs=1", "train.compile=off"], progress=False)


def test_the_burda_schedule_has_its_stages_rates_and_3280_epochs():
    from pyro_vae.train import BURDA_EPOCHS, learning_rate

    t = config_lib.load(None, ["train.lr_schedule=burda", "train.lr=0.001"]).train
    rates = [learning_rate(t, epoch) for epoch in range(BURDA_EPOCHS)]
    stages = [(rate, sum(1 for r in rates if r == rate)) for rate in dict.fromkeys(rates)]
    assert stages == [(1e-3 * 10 ** (-i / 7), 3**i) for i in range(8)] and BURDA_EPOCHS == 3280
    assert learning_rate(t, BURDA_EPOCHS + 5) == rates[-1]
    constant = config_lib.load(None, ["train.lr_decay=0.5"]).train
    assert [learning_rate(constant, e) for e in range(3)] == [1e-3, 5e-4, 2.5e-4]


def test_a_run_resumes_exactly_mid_schedule(data_dir, tmp_path):
    """Epochs 1 to 4 cross two stage boundaries (after epochs 1 and 4); stop after epoch 2, mid-stage."""
    overrides = ["train.lr_schedule=burda", "train.adam_eps=1e-4", "data.limit=300", "train.epochs=5"]
    straight, _ = train_run(small_config(data_dir, *overrides), tmp_path / "straight", progress=False)
    train_run(small_config(data_dir, *overrides[:-1], "train.epochs=2"), tmp_path / "resumed", progress=False)
    resumed, state = train_run(small_config(data_dir, *overrides), tmp_path / "resumed", resume=True, progress=False)
    assert state.epoch == 5
    assert_same_weights(straight, resumed)
    payload = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert payload["optimizer"]["param_groups"][0]["lr"] == 1e-3 * 10 ** (-2 / 7)  # epoch 5 (0-based 4) opens stage 2
    assert payload["optimizer"]["param_groups"][0]["eps"] == 1e-4


def test_the_checkpoint_schema_knows_every_field_of_the_training_state():
    import dataclasses

    from pyro_vae.run import STATE_FIELDS
    from pyro_vae.train import TrainState

    assert STATE_FIELDS == {f.name for f in dataclasses.fields(TrainState)}


def test_resume_without_a_config_continues_the_runs_own_config(data_dir, tmp_path, trained_run):
    """`train --resume --set train.epochs=N` starts from the run's config.toml, not the defaults."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    epochs = len((run / "metrics.csv").read_text().splitlines()) - 1
    assert main(["train", "--out", str(run), "--resume", "--no-progress", "--set", f"train.epochs={epochs + 1}"]) == 0
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 2))
    # another key still differs from the run's: refused, as with --config
    assert main(["train", "--out", str(run), "--resume", "--set", "model.latent_dim=3"]) == 2
