"""A run's per-epoch metrics, also sent where a user keeps their experiments: TensorBoard
(``train.tensorboard = "DIR"``, event files in DIR) or MLflow (``train.mlflow = "EXPERIMENT"``, one
MLflow run per training process, into the tracking store ``MLFLOW_TRACKING_URI`` names). Both are
off by default and need their package (``pip install 'pyro_vae[tensorboard]'`` or
``'pyro_vae[mlflow]'``); a run that asks for one that is missing is refused before it starts.

``metrics.csv`` in the run folder stays the record; these are copies of its rows, one value per
column per epoch (``train_elbo`` and ``test_elbo`` in nats per datum, ``seconds``), at the epoch
number as the step.
"""

import importlib.util

from .errors import UserError

LOGGED = ("train_elbo", "test_elbo", "seconds")


def check_available(t):
    """Refuse, in one line, a tracker whose package is not installed."""
    for key, module, extra in (("tensorboard", "tensorboard", "tensorboard"), ("mlflow", "mlflow", "mlflow")):
        if getattr(t, key) and importlib.util.find_spec(module) is None:
            raise UserError(f"train.{key} = {getattr(t, key)!r} needs the {module} package; install it (pip install 'pyro_vae[{extra}]') "
                            f"or set train.{key} = \"\"")


class Trackers:
    """The configured trackers of one training process (the main one); :meth:`log` sends a
    ``metrics.csv`` row to each, :meth:`close` flushes them."""

    def __init__(self, cfg, run_name):
        t = cfg.train
        check_available(t)
        self.tensorboard = self.mlflow = None
        if t.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(t.tensorboard)
        if t.mlflow:
            import mlflow

            mlflow.set_experiment(t.mlflow)
            self.mlflow = mlflow.start_run(run_name=run_name)
            mlflow.log_params(flat(cfg))

    def log(self, row):
        if self.tensorboard is not None:
            for key in LOGGED:
                self.tensorboard.add_scalar(key, row[key], row["epoch"])
            self.tensorboard.flush()
        if self.mlflow is not None:
            import mlflow

            mlflow.log_metrics({key: row[key] for key in LOGGED}, step=row["epoch"])

    def close(self):
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.mlflow is not None:
            import mlflow

            mlflow.end_run()


def flat(cfg):
    """The config as MLflow parameters: ``{"model.latent_dim": 50, ...}``, values as text."""
    import dataclasses

    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict) and key not in ("prior", "likelihood", "guide", "objective"):
                walk(value, f"{prefix}{key}.")
            else:
                out[prefix + key] = str(value)

    walk(dataclasses.asdict(cfg), "")
    return out
