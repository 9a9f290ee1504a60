"""The run folder, and the two ways into training: :func:`train_run` (a run folder from a config)
and :func:`fit_tensors` (the user's tensors, in memory).

A run folder holds ``config.toml`` (the fully resolved config, the data's location made absolute),
``checkpoint.pt`` (written after every epoch), ``metrics.csv`` (a row per epoch) and the figures.
The checkpoint's payload is written by :func:`save_checkpoint` and read by :func:`load_checkpoint`,
side by side below with its format version: tensors and plain data only, the config as TOML
text, and the fingerprint of the data it was trained on.
"""

import contextlib
import csv
import dataclasses
import io
import math
from pathlib import Path

import pyro
import torch

from . import config as config_lib
from . import data, distributed, sizes, writer
from .errors import UserError
from .files import atomic_write_text, load_tensors, save_tensors
from .model import VAE
from .train import METRIC_FIELDS, TrainState, fit, make_optimizer

RUN_FILES = ("config.toml", "checkpoint.pt", "metrics.csv")
FORMAT_VERSION = 1
PAYLOAD_KEYS = {"format", "config", "input_dim", "num_classes", "model"}


def build_vae(cfg, input_dim, num_classes):
    """The VAE a config describes, for data of ``input_dim`` features and ``num_classes`` labels."""
    m = cfg.model
    return VAE(
        input_dim=input_dim,
        latent_dim=m.latent_dim,
        prior=m.prior,
        likelihood=m.likelihood,
        encoder=vars(m.encoder).copy(),
        decoder=vars(m.decoder).copy(),
        num_classes=num_classes if m.conditional else None,
        guide=m.guide,
        classifier=vars(m.classifier).copy() if cfg.data.labelled else None,
    )


# -- the checkpoint: writer and reader ------------------------------------------------------
def save_checkpoint(path, cfg, ds, fingerprint, vae, optimizer, state):
    save_tensors(
        path,
        {
            "format": FORMAT_VERSION,
            "config": cfg.to_toml(),
            "input_dim": ds.input_dim,
            "num_classes": ds.num_classes,
            "image_shape": list(ds.image_shape),
            "data_fingerprint": fingerprint,
            "model": vae.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": dataclasses.asdict(state),
        },
    )


def load_checkpoint(path, map_location="cpu"):
    """The payload :func:`save_checkpoint` wrote; every way it can be unusable is a ``UserError``.
    ``data_fingerprint`` is absent from runs written before it was recorded."""
    path = Path(path)
    if path.parent.is_dir():
        writer.recover_if_idle(path.parent)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; train first with `pyro-vae train --out {path.parent}`")
    payload = load_tensors(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION or not PAYLOAD_KEYS <= payload.keys():
        raise UserError(f"{path} is not a pyro-vae checkpoint (format {FORMAT_VERSION}); retrain with this version of pyro-vae")
    check_payload(payload, path)
    return payload


def _whole(value, low=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


# the training state a checkpoint carries (train.TrainState's fields; readers need no training code)
STATE_FIELDS = {"epoch", "step", "history", "skipped"}
# what each field of a payload must hold; "state" and "optimizer" are read only by --resume
PAYLOAD_SCHEMA = {
    "config": lambda v: isinstance(v, str),
    "input_dim": lambda v: _whole(v, 1),
    "num_classes": lambda v: v is None or _whole(v, 1),
    "image_shape": lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_whole(n, 1) for n in v),
    "data_fingerprint": lambda v: isinstance(v, str),
    "model": lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items()),
    "optimizer": lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict) and isinstance(v.get("param_groups"), list),
    "state": lambda v: isinstance(v, dict) and v.keys() == STATE_FIELDS
    and all(_whole(v[k]) for k in ("epoch", "step", "skipped")) and isinstance(v["history"], list)
    and all(isinstance(row, dict) for row in v["history"]),
}


def check_payload(payload, path):
    """Every field a command reads has the type and range :func:`save_checkpoint` gives it, and
    the stored config is one this version accepts: a payload that passes its CRC but was written
    by something else, or edited, is refused here in one line for every command alike."""
    def damaged(what):
        return UserError(f"checkpoint {path} is damaged ({what}); retrain, or restore it from a copy")

    for key, valid in PAYLOAD_SCHEMA.items():
        if key in payload and not valid(payload[key]):
            raise damaged(f"its field '{key}' holds {type(payload[key]).__name__} {str(payload[key])[:60]!r}, not what pyro-vae writes there")
    if "image_shape" in payload and math.prod(payload["image_shape"]) != payload["input_dim"]:
        raise damaged(f"its image_shape {payload['image_shape']} does not hold its input_dim of {payload['input_dim']} features")
    try:
        config_lib.loads(payload["config"], "its config")
    except UserError as e:
        raise damaged(str(e)) from None


def load_weights(vae, state_dict, path):
    try:
        vae.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"checkpoint {path} does not match the model its config describes ({first}); was the config edited? use the config.toml it was trained with") from None


def load_run(run_dir, device="cpu"):
    """``(cfg, vae, payload)`` for the run in ``run_dir``; independent of Pyro's param store."""
    path = Path(run_dir) / "checkpoint.pt"
    payload = load_checkpoint(path, map_location=device)
    cfg = config_lib.loads(payload["config"])
    sizes.check_training_fits(cfg, payload["input_dim"], payload["num_classes"], cfg.train.batch_size, device)
    vae = build_vae(cfg, payload["input_dim"], payload["num_classes"])
    load_weights(vae, payload["model"], path)
    return cfg, vae.to(device), payload


def check_same_data(run_dir, cfg, payload):
    """Refuse, in one line, data other than those the run was trained on (runs written before
    fingerprints were recorded are taken on trust)."""
    stored = payload.get("data_fingerprint")
    if stored is not None and data.fingerprint(cfg.data) != stored:
        where = cfg.data.path or cfg.data.dir
        raise UserError(f"the data at {where} are not the data {run_dir} was trained on (their fingerprint differs); "
                        "restore the original files, or train a new run on these")


def load_split(run_dir, split="test", limit=0, device="cpu"):
    """``(cfg, vae, payload, Split)``: the run's model and the images of ``split`` (its first
    ``limit``, all for 0) on ``device``, pixels as the model saw them, after checking that they are
    the data it was trained on. What ``evaluate``, ``encode`` and ``explore`` start from."""
    if split not in ("test", "train"):
        raise UserError(f"--split must be 'test' or 'train', got {split!r}")
    cfg, vae, payload = load_run(run_dir, device)
    ds = data.load_dataset(cfg)
    data.check_data(vae, ds, cfg.data.binarize)
    check_same_data(run_dir, cfg, payload)
    chosen = ds.test if split == "test" else data.fixed_train_split(ds, cfg.data.binarize, cfg.seed)
    return cfg, vae, payload, chosen.head(limit).to(device)


def with_resolved_data(cfg):
    """``cfg`` with the data's location made absolute, as the run records it."""
    data_dir, path = data.resolved_location(cfg.data)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=data_dir, path=path))


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
    if not (cfg.data.dir or cfg.data.path):
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=stored.data.dir, path=stored.data.path))
    cfg = with_resolved_data(cfg)
    # how the step runs does not change what it computes: a run may resume compiled or eager
    comparable = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=stored.train.epochs, max_steps=stored.train.max_steps,
                                                                    compile=stored.train.compile))
    if comparable != with_resolved_data(stored):
        raise UserError(f"--resume: the config differs from the one {out} was trained with (only train.epochs, train.max_steps and train.compile may change); drop --config/--set or start a new run")
    return cfg, payload


def write_run_figures(out, vae, ds, history):
    """samples.png (for a conditional VAE a row per class), reconstructions.png, loss.png."""
    from . import plots  # matplotlib and torchvision: only where figures are drawn, not on `import pyro_vae`

    labels = vae.labels_per_class(8) if vae.num_classes else None
    samples = vae.sample(64 if labels is None else len(labels), y=labels)
    plots.image_grid(out / "samples.png", samples, ds.image_shape, 8, title="samples from the model: E[x | z, y], z ~ p(z)"
                     if labels is not None else "samples from the model: E[x | z], z ~ p(z)", row_labels=class_row_labels(vae, 8))
    test = ds.test.head(32)
    cols = min(8, len(test))
    plots.reconstruction_grid(out / "reconstructions.png", test.x, vae.reconstruct(test.x, test.y), ds.image_shape, cols)
    plots.elbo_curves(out / "loss.png", history)


def class_row_labels(vae, n):
    """Row labels of a grid drawn with ``vae.labels_per_class(n)`` (None for an unconditional VAE)."""
    return [f"label {c}" for c in range(vae.num_classes)] if vae.num_classes else None


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
    ds = data.load_dataset(cfg)
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

    state = fit(vae, ds, cfg, state=state, optimizer=optimizer, on_epoch=save, progress=progress, world=world)
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
