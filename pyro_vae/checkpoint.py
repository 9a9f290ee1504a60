"""Checkpoints and run files, written atomically (temporary file, fsync, rename) so a kill at any
moment leaves either the old file or the new one, never half of one.

A checkpoint holds tensors and plain data only, and the config as TOML text: it loads with
``torch.load(weights_only=True)``, so opening a checkpoint someone sent you runs no pickled code.
"""

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from . import config as config_lib
from .errors import UserError
from .model import VAE

FORMAT_VERSION = 1
PAYLOAD_KEYS = {"format", "config", "input_dim", "num_classes", "model"}


def atomic_write_bytes(path, data):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; run files follow the umask like any other
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode())


def save(path, payload):
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load(path, map_location="cpu"):
    """Load a checkpoint written by :func:`save`; every way it can be unusable is a ``UserError``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; train first with `pyro-vae train --out {path.parent}`")
    check_archive(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).splitlines()[0] if "weights_only" not in str(e) else "it contains pickled Python objects"
        raise UserError(f"refusing to load {path}: {reason}; only checkpoints written by pyro-vae (tensors and plain data) are loaded") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise corrupted(path, str(e)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION or not PAYLOAD_KEYS <= payload.keys():
        raise UserError(f"{path} is not a pyro-vae checkpoint (format {FORMAT_VERSION}); retrain with this version of pyro-vae")
    return payload


def check_archive(path):
    """``torch.save`` writes a zip archive holding a CRC-32 of every member, which ``torch.load``
    does not verify: flipped bits in the weights would load silently. ``testzip`` checks them."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise corrupted(path, str(e)) from None
    if bad is not None:
        raise corrupted(path, f"{bad} fails its CRC-32 check")


def corrupted(path, reason):
    return UserError(f"checkpoint {path} is truncated or corrupted ({reason.splitlines()[0][:120]}); retrain, or restore it from a copy")


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
    )


def load_run(run_dir, device="cpu"):
    """``(cfg, vae, payload)`` for the run in ``run_dir``; independent of Pyro's param store."""
    payload = load(Path(run_dir) / "checkpoint.pt", map_location=device)
    cfg = config_lib.loads(payload["config"])
    vae = build_vae(cfg, payload["input_dim"], payload["num_classes"])
    load_weights(vae, payload["model"], Path(run_dir) / "checkpoint.pt")
    return cfg, vae.to(device), payload


def load_weights(vae, state_dict, path):
    try:
        vae.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"checkpoint {path} does not match the model its config describes ({first}); was the config edited? use the config.toml it was trained with") from None
