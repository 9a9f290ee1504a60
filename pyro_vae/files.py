"""Every file the package writes goes through here: atomically (temporary file, fsync, rename), so
a kill at any moment leaves either the old file or the new one, never half of one; and every
tensor archive it reads is checked first, so a damaged or hostile file is refused in one line.

Archives hold tensors and plain data only: they load with ``torch.load(weights_only=True)``, so
opening a checkpoint someone sent you runs no pickled code.
"""

import io
import os
import pickle
import stat
import tempfile
import zipfile
from pathlib import Path

import torch

from .errors import UserError


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` whole or not at all. A failure of the machine (disk full,
    permissions) is an ``OSError`` naming ``path``, not the temporary file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name to write")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; run files follow the umask like any other
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def read_user_file(path, what, option):
    """The bytes of a file the user named with ``option`` (see :func:`check_regular_file`)."""
    check_regular_file(path, what, option)
    with open(path, "rb") as f:
        return f.read()


def check_regular_file(path, what, option):
    """Refuse, in one line, anything but a regular file where the user named one with ``option``:
    a folder, or a named pipe, whose open would block forever, is refused before it is opened."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist; check the path given to {option}") from None
    except OSError as e:
        raise UserError(f"cannot look at {what} {path} ({e.strerror}); check the path given to {option}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise UserError(f"{what} {path} is {kind}; give {option} a file")


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
