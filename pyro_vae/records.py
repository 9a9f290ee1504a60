"""Evaluation records: what ``evaluate`` and ``explore`` measured, kept in the run folder.

Each measurement is one JSON file under ``RUN/evaluations/``, named by its settings, so a second
``evaluate`` with other settings adds a file beside the first, and the same settings replace it
(atomically, through :mod:`pyro_vae.files`):

* ``log_px-K{K}-{all|first{N}}-seed{S}.json`` (``evaluate``): the quantity (``log p(x)``, or
  ``log p(x | y)`` for a conditional run), K, the estimator's seed, which test images (the
  ``--limit``, their count and a SHA-256 of the exact pixels and labels evaluated, so two runs
  whose binarizations differ are told apart), the data files' fingerprint, the package version,
  the summary ``evaluate --json`` prints, and the per-image ``log_px``, ``elbo``, ``ess`` and
  ``khat`` (nats per image; JSON ``null`` for an infinite k-hat);
* ``explore-seed{S}.json`` (``explore``): its summary (active units, per-dimension KL).

Records are plain JSON: ``pyro-vae compare`` reads them (and ``config.toml``, ``metrics.csv``)
without loading a checkpoint or any of PyTorch's machinery beyond the config's.
"""

import hashlib
import json
import math
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import UserError
from .files import atomic_write_text

FORMAT = 1
FOLDER = "evaluations"
KINDS = ("log_px", "explore")


def log_px_name(num_samples, limit, seed):
    return f"log_px-K{num_samples}-{f'first{limit}' if limit else 'all'}-seed{seed}.json"


def explore_name(seed):
    return f"explore-seed{seed}.json"


def images_fingerprint(split):
    """SHA-256 of the pixels (as float32) and labels of a :class:`pyro_vae.data.Split`, with their shapes."""
    import numpy as np

    digest = hashlib.sha256()
    for part in (split.x, split.y):
        if part is not None:
            array = np.ascontiguousarray(part.detach().cpu().numpy().astype(np.float32 if part.is_floating_point() else np.int64))
            digest.update(repr(array.shape).encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def images(split, limit):
    """Which test images a measurement covered, as a record stores them."""
    x = split.x
    return {"split": "test", "limit": limit, "count": len(split), "fingerprint": images_fingerprint(split),
            "input_dim": x.shape[1], "binary": bool(((x == 0) | (x == 1)).all())}


def package_version():
    try:
        return version("pyro_vae")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def finite_or_none(value):
    """JSON has no inf or NaN: an infinite k-hat or a one-datum standard error becomes null."""
    return value if isinstance(value, (int, str)) or math.isfinite(value) else None


def new_record(kind, settings, images, data_fingerprint, summary, per_image=None, quantity=None):
    record = {
        "format": FORMAT,
        "kind": kind,
        "quantity": quantity,
        "settings": settings,
        "images": images,
        "data_fingerprint": data_fingerprint,
        "version": package_version(),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "summary": {key: finite_or_none(v) if isinstance(v, float) else v for key, v in summary.items()},
    }
    if per_image is not None:
        record["per_image"] = {key: [finite_or_none(round(v, 6)) for v in values] for key, values in per_image.items()}
    return record


def write(run_dir, name, record):
    """Store ``record`` as ``run_dir/evaluations/name``, replacing one of the same settings; returns its path."""
    folder = Path(run_dir) / FOLDER
    folder.mkdir(exist_ok=True)
    path = folder / name
    atomic_write_text(path, json.dumps(record) + "\n")
    return path


def complete(record):
    """Whether a record holds what its readers use (a hand-edited or foreign file may not)."""
    if not all(isinstance(record.get(key), dict) for key in ("settings", "images", "summary")):
        return False
    if record["kind"] != "log_px":
        return True
    count, values = record["images"].get("count"), record.get("per_image")
    return (isinstance(values, dict) and "num_samples" in record["settings"] and "fingerprint" in record["images"]
            and all(isinstance(values.get(key), list) and len(values[key]) == count for key in ("log_px", "elbo", "khat")))


def read(run_dir, kind):
    """Every record of ``kind`` in ``run_dir`` (oldest name first), each with its ``path`` added."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    found = []
    for path in sorted((Path(run_dir) / FOLDER).glob(f"{kind}-*.json")):
        try:
            record = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{path} is not an evaluation record (not valid JSON); delete it and run the command that wrote it again") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("kind") != kind or not complete(record):
            raise UserError(f"{path} is not a pyro-vae {kind} record (format {FORMAT}); delete it and run the command that wrote it again")
        record["path"] = str(path)
        found.append(record)
    return found
