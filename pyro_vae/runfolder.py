"""Reading a run folder, with no training code: the checkpoint payload (its writer and reader side
by side, with the format version), the VAE its config describes, the test or training images as
the model saw them, the config and the per-epoch metrics.

What ``evaluate``, ``generate``, ``encode``, ``explore`` and ``compare`` start from; training
(:mod:`pyro_vae.run`) writes what this reads. ``compare`` uses only :func:`read_config` and
:func:`read_metrics` (and :mod:`pyro_vae.records`): no checkpoint is loaded.
"""

import csv
import dataclasses
import math
from pathlib import Path

import torch

from . import config as config_lib
from . import data, sizes, writer
from .errors import UserError
from .features import FeatureMap
from .files import load_tensors, save_tensors
from .model import VAE

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
        layers=m.layers,
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


def feature_map(cfg):
    """For ``data.features``, the map from the feature run's images to this run's data and back
    (:mod:`pyro_vae.features`; its ``codes`` are the data before this run's limits); else None."""
    if not cfg.data.features:
        return None
    try:
        feature_cfg, vae, _ = load_run(cfg.data.features)
    except UserError as e:
        raise UserError(f"data.features = {cfg.data.features!r}: {e}") from None
    # the feature run's data as it saw them: its own codes of another run's images, if it was stacked too
    images = load_dataset(dataclasses.replace(feature_cfg, data=dataclasses.replace(feature_cfg.data, labelled=0, limit=0, test_limit=0)))
    train = data.fixed_train_split(images, feature_cfg.data.binarize, feature_cfg.seed)
    return FeatureMap(vae, dataclasses.replace(images, train=train), cfg.data.features)


def load_dataset(cfg):
    """The config's data (:func:`data.load_dataset`); for ``data.features``, the feature run's
    codes of its own images as the run saw them."""
    fmap = feature_map(cfg)
    return data.load_dataset(cfg, None if fmap is None else fmap.codes)


def check_same_data(run_dir, cfg, payload):
    """Refuse, in one line, data other than those the run was trained on (runs written before
    fingerprints were recorded are taken on trust)."""
    stored = payload.get("data_fingerprint")
    if stored is not None and data.fingerprint(cfg.data) != stored:
        where = cfg.data.features or cfg.data.path or cfg.data.dir
        raise UserError(f"the data at {where} are not the data {run_dir} was trained on (their fingerprint differs); "
                        "restore the original files, or train a new run on these")


def load_data(run_dir, device="cpu"):
    """``(cfg, vae, payload, Dataset)``: the run's model and its data as the model saw them (on the
    CPU), after checking that they are the data it was trained on."""
    cfg, vae, payload = load_run(run_dir, device)
    check_same_data(run_dir, cfg, payload)  # first: data that changed explain a mismatch better than its shape
    ds = load_dataset(cfg)
    data.check_data(vae, ds, cfg.data.binarize)
    return cfg, vae, payload, ds


def load_split(run_dir, split="test", limit=0, device="cpu"):
    """``(cfg, vae, payload, Split)``: the run's model and the images of ``split`` (its first
    ``limit``, all for 0) on ``device``, pixels as the model saw them (:func:`load_data`). What
    ``evaluate`` and ``encode`` start from."""
    if split not in ("test", "train"):
        raise UserError(f"--split must be 'test' or 'train', got {split!r}")
    cfg, vae, payload, ds = load_data(run_dir, device)
    chosen = ds.test if split == "test" else data.fixed_train_split(ds, cfg.data.binarize, cfg.seed)
    return cfg, vae, payload, chosen.head(limit).to(device)


def class_row_labels(vae, n):
    """Row labels of a grid drawn with ``vae.labels_per_class(n)`` (None for an unconditional VAE)."""
    return [f"label {c}" for c in range(vae.num_classes)] if vae.num_classes else None


# -- the folder's text files ----------------------------------------------------------------
def read_config(run_dir):
    """The ``config.toml`` of the run in ``run_dir`` as its TOML table, unvalidated: reading it
    needs none of the priors, likelihoods or families it names (a run of a family registered in
    the user's own module reads anywhere)."""
    path = Path(run_dir) / "config.toml"
    if not path.exists():
        raise UserError(f"{run_dir} is not a run folder (no config.toml); give a folder written by `pyro-vae train --out`")
    try:
        return config_lib.tomllib.loads(path.read_bytes().decode())
    except (UnicodeDecodeError, config_lib.tomllib.TOMLDecodeError) as e:
        raise UserError(f"{path} is not valid TOML ({e}); restore the config.toml the run was trained with") from None


def read_metrics(run_dir):
    """The rows of ``metrics.csv`` (one per completed epoch) as dicts of numbers; [] if absent."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return []
    try:
        with path.open(newline="") as f:
            return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]
    except (ValueError, TypeError):
        raise UserError(f"{path} is not a metrics file written by pyro-vae (a value is not a number); restore it or retrain") from None
