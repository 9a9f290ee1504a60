"""Writing a run folder, and the two ways into training: :func:`train_run` (a run folder from a
config) and :func:`fit_tensors` (the user's tensors, in memory).

A run folder holds ``config.toml`` (the fully resolved config, the data's location made absolute),
``checkpoint.pt`` (written after every epoch), ``metrics.csv`` (a row per epoch), the figures and,
once evaluated, ``evaluations/`` (:mod:`pyro_vae.records`). The checkpoint's payload is written by
:func:`~pyro_vae.runfolder.save_checkpoint` and read by :func:`~pyro_vae.runfolder.load_checkpoint`,
side by side in :mod:`pyro_vae.runfolder` with its format version: tensors and plain data only,
the config as TOML text, and the fingerprint of the data it was trained on. Reading a run needs
none of the training code here.
"""

import contextlib
import csv
import dataclasses
import io
from pathlib import Path

import pyro
import torch

from . import config as config_lib
from . import data, distributed, sizes, tracking, writer
from .errors import UserError
from .files import atomic_write_text
from .runfolder import build_vae, check_same_data, class_row_labels, load_checkpoint, load_dataset, load_weights, save_checkpoint
# the reader moved to runfolder.py (no training code); its names stay importable from here for users' scripts
from .runfolder import FORMAT_VERSION, PAYLOAD_KEYS, PAYLOAD_SCHEMA, STATE_FIELDS, check_payload, load_run, load_split  # noqa: F401
from .train import METRIC_FIELDS, TrainState, fit, make_optimizer

RUN_FILES = ("config.toml", "checkpoint.pt", "metrics.csv")


def with_resolved_data(cfg):
    """``cfg`` with the data's location made absolute, as the run records it."""
    return dataclasses.replace(cfg, data=data.resolved_location(cfg.data))


# -- the folder ----------------------------------------------------------------------------
def metrics_csv(history):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def prepare_run_dir(out, cfg, resume, overwrite):
    """Refuse to clobber a different run. Returns ``(cfg, payload)``: on resume the checkpoint to
    continue from, and the config with the run's own data location where ``cfg`` names none."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; pick a folder for the run")
    has_run = out.is_dir() and any((out / name).exists() for name in RUN_FILES)
    if resume and has_run and not (out / "checkpoint.pt").exists():
        raise UserError(f"--resume: {out} has no checkpoint.pt (the run stopped before its first epoch ended); start it again with --overwrite")
    if not resume:
        if has_run and not overwrite:
            raise UserError(f"{out} already holds a run; add --resume to continue it, --overwrite to replace it, or choose another --out")
        return with_resolved_data(cfg), None
    payload = load_checkpoint(out / "checkpoint.pt")
    stored = config_lib.loads(payload["config"])
    if not (cfg.data.dir or cfg.data.path or cfg.data.features):
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=stored.data.dir, path=stored.data.path, features=stored.data.features))
    cfg = with_resolved_data(cfg)
    # how the step runs does not change what it computes: a run may resume compiled or eager
    comparable = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=stored.train.epochs, max_steps=stored.train.max_steps,
                                                                    compile=stored.train.compile,
                                                                    tensorboard=stored.train.tensorboard, mlflow=stored.train.mlflow))
    if comparable != with_resolved_data(stored):
        raise UserError(f"--resume: the config differs from the one {out} was trained with (only train.epochs, train.max_steps, train.compile, train.tensorboard and train.mlflow may change); drop --config/--set or start a new run")
    return cfg, payload


def write_run_figures(out, vae, ds, history):
    """samples.png (for a conditional VAE a row per class), reconstructions.png, loss.png."""
    from . import plots  # matplotlib and torchvision: only where figures are drawn, not on `import pyro_vae`

    labels = vae.labels_per_class(8) if vae.num_classes else None
    samples, image_shape = ds.pictures(vae.sample(64 if labels is None else len(labels), y=labels))
    plots.image_grid(out / "samples.png", samples, image_shape, 8, title="samples from the model: E[x | z, y], z ~ p(z)"
                     if labels is not None else "samples from the model: E[x | z], z ~ p(z)", row_labels=class_row_labels(vae, 8))
    test = ds.test.head(32)
    cols = min(8, len(test))
    plots.reconstruction_grid(out / "reconstructions.png", ds.pictures(test.x)[0], ds.pictures(vae.reconstruct(test.x, test.y))[0], image_shape, cols)
    plots.elbo_curves(out / "loss.png", history)


def train_run(cfg, out, resume=False, overwrite=False, progress=True, world=None):
    """Train as ``cfg`` says into run folder ``out`` (see the module docstring); ``--resume``
    continues exactly where the last checkpoint left off. Returns ``(vae, state)``.

    The main process holds the folder's writer lock throughout (:mod:`pyro_vae.writer`), and
    nothing is written into the folder before the first checkpoint: a run that is refused, fails
    or is killed before then leaves the folder as it was (a replaced run whole)."""
    if world is None:
        with distributed.init(cfg.train.device) as world:
            return train_run(cfg, out, resume, overwrite, progress, world)
    if not str(out).strip():
        raise UserError("--out is empty; name the folder to write the run into")
    out = Path(out)
    with writer.exclusive(out) if world.is_main else contextlib.nullcontext():
        return _train_into(cfg, out, resume, overwrite, progress, world)


def _train_into(cfg, out, resume, overwrite, progress, world):
    cfg, payload = prepare_run_dir(out, cfg, resume, overwrite)
    ds = load_dataset(cfg)
    if payload is None:
        fingerprint = data.fingerprint(cfg.data)
    else:
        if (payload["input_dim"], payload["num_classes"]) != (ds.input_dim, ds.num_classes):
            raise UserError(
                f"--resume: {out} was trained on data of {payload['input_dim']} features per datum ({payload['num_classes'] or 'no'} label classes) "
                f"but the data now have {ds.input_dim} ({ds.num_classes or 'no'} label classes); resume with the data it was trained on or start a new run"
            )
        check_same_data(out, cfg, payload)
        fingerprint = payload.get("data_fingerprint")
    sizes.check_training_fits(cfg, ds.input_dim, ds.num_classes, len(ds.train) // world.size, world.device)
    pyro.set_rng_seed(cfg.seed)
    vae = build_vae(cfg, ds.input_dim, ds.num_classes)
    data.check_data(vae, ds, cfg.data.binarize)
    vae.init_from_data(ds.train.x)  # a resumed run's weights replace this below
    ds = ds.to(world.device)
    vae.to(world.device)
    optimizer = make_optimizer(vae.parameters(), cfg.train)
    state = TrainState()
    if payload is not None:
        load_weights(vae, payload["model"], out / "checkpoint.pt")
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise UserError(f"checkpoint {out / 'checkpoint.pt'} is damaged (its optimizer state does not fit the model: {e}); "
                            "retrain, or restore it from a copy") from None
        state = TrainState(**payload["state"])
    world.barrier()  # every process has checked the run folder before the main one writes to it
    owns_folder = payload is not None  # a new run takes the folder over at its first checkpoint

    def save(state, optimizer):
        nonlocal owns_folder

        def write():  # the checkpoint last: the run's commit point
            atomic_write_text(out / "config.toml", cfg.to_toml())
            atomic_write_text(out / "metrics.csv", metrics_csv(state.history))
            save_checkpoint(out / "checkpoint.pt", cfg, ds, fingerprint, vae, optimizer, state)

        if owns_folder:
            write()
        else:
            writer.switch(out, write)
            owns_folder = True
        trackers.log(state.history[-1])

    trackers = tracking.Trackers(cfg, out.name) if world.is_main else None
    try:
        state = fit(vae, ds, cfg, state=state, optimizer=optimizer, on_epoch=save, progress=progress, world=world)
    finally:
        if trackers is not None:
            trackers.close()
    if world.is_main:
        write_run_figures(out, vae, ds, state.history)
    return vae, state


def fit_tensors(vae, x, y=None, x_test=None, y_test=None, overrides=(), progress=True):
    """Train ``vae`` on tensors from Python: ``x`` (N, input_dim), labels ``y`` for a conditional
    VAE, and a held-out ``x_test`` / ``y_test`` (default: the last 10% of ``x``) for the per-epoch
    test ELBO. ``overrides`` are config ``key=value`` strings (``"train.epochs=5"``, and
    ``data.binarize``, default ``"none"`` here: the tensors are used as given). Trains on the
    VAE's device; returns the :class:`TrainState` with its per-epoch history."""
    cfg = config_lib.load(None, ["data.binarize=none", *overrides])
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() != 2:
        raise UserError(f"x must have shape (N, {vae.input_dim}), one flattened datum per row, got {tuple(x.shape)}")
    train = data.Split(x, None if y is None else torch.as_tensor(y))
    if x_test is None:
        train, test = train.split_off()
    else:
        test = data.Split(torch.as_tensor(x_test, dtype=torch.float32), None if y_test is None else torch.as_tensor(y_test))
    ds = data.prepare(data.Dataset(train, test, (1, vae.input_dim), vae.num_classes), cfg.data.binarize, cfg.seed)
    data.check_data(vae, ds, cfg.data.binarize)
    vae.init_from_data(ds.train.x)
    return fit(vae, ds.to(vae.device), cfg, progress=progress)
