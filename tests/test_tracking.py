"""Per-epoch metrics in TensorBoard and MLflow: the rows of metrics.csv, where the package is
installed (skipped where it is not), and one line where a run asks for a tracker that is missing."""

import csv
import importlib.util

import pytest

from helpers import small_config
from pyro_vae import cli, config
from pyro_vae.errors import UserError
from pyro_vae.run import train_run

QUICK = ("data.limit=300", "train.epochs=2")


def metrics(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_tensorboard_gets_every_epochs_metrics(data_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "tb"
    train_run(small_config(data_dir, *QUICK, f'train.tensorboard="{logs}"'), tmp_path / "run", progress=False)
    events = EventAccumulator(str(logs))
    events.Reload()
    rows = metrics(tmp_path / "run")
    for key in ("train_elbo", "test_elbo", "seconds"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(int(r["epoch"]), pytest.approx(float(r[key]), rel=1e-6)) for r in rows], key


def test_mlflow_gets_every_epochs_metrics_and_the_config(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    train_run(small_config(data_dir, *QUICK, 'train.mlflow="vae"'), tmp_path / "run", progress=False)
    client = mlflow.tracking.MlflowClient()
    (run,) = client.search_runs([mlflow.get_experiment_by_name("vae").experiment_id])
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "test_elbo")]
    assert history == [(int(r["epoch"]), pytest.approx(float(r["test_elbo"]), rel=1e-6)) for r in metrics(tmp_path / "run")]
    assert run.data.params["model.latent_dim"] == "8"


@pytest.mark.parametrize("key, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_missing_tracker_package_is_one_line_before_anything_is_written(key, module, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(UserError, match=rf"train.{key} = 'x' needs the {module} package; install it \(pip install 'pyro_vae\[{module}\]'\)"):
        config.load(None, [f"train.{key}=x"])
    assert cli.main(["train", "--set", f"train.{key}=x", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "run").exists()
