"""Every file the package writes goes through here: atomically (temporary file, fsync, rename), so
a kill at any moment leaves either the old file or the new one, never half of one; and every
tensor archive it reads is checked first, so a damaged or hostile file is refused in one line.

Archives hold tensors and plain data only: they load with ``torch.load(weights_only=True)``, so
opening a checkpoint someone sent you runs no pickled code.
"""

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from .errors import UserError


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


def save_tensors(path, payload):
    """``torch.save`` of tensors and plain data, written atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_tensors(path, map_location="cpu"):
    """Read an archive written by :func:`save_tensors`; every way it can be unusable is a ``UserError``."""
    path = Path(path)
    check_archive(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).splitlines()[0] if "weights_only" not in str(e) else "it contains pickled Python objects"
        raise UserError(f"refusing to load {path}: {reason}; only checkpoints written by pyro-vae (tensors and plain data) are loaded") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise corrupted(path, str(e)) from None


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
