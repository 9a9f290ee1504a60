"""Datasets as whole tensors on the training device: MNIST through torchvision, or the user's
own arrays. Batches are sliced from device memory; no per-item DataLoader transforms.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass
class Split:
    """Pixels ``x`` (N, D) as floats in [0, 1] (or any reals for user data), labels ``y`` (N,) or None."""

    x: torch.Tensor
    y: torch.Tensor | None

    def __len__(self):
        return self.x.shape[0]

    def to(self, device):
        return Split(self.x.to(device), None if self.y is None else self.y.to(device))

    def head(self, n):
        return self if not n else Split(self.x[:n], None if self.y is None else self.y[:n])


@dataclass
class Dataset:
    train: Split
    test: Split
    image_shape: tuple  # (H, W) for plotting
    num_classes: int | None

    @property
    def input_dim(self):
        return self.train.x.shape[1]


DEFAULT_ROOT = Path.home() / ".cache" / "pyro_vae"


def data_root(configured):
    return configured or os.environ.get("PYRO_VAE_DATA") or str(DEFAULT_ROOT)


def load_mnist(root):
    """MNIST from the torchvision root ``root``. Only the default cache folder is downloaded into:
    a folder the user named must already hold the files, so a typo in data.dir or an offline
    machine fails at once with the place the files go, instead of waiting on the network."""
    from torchvision.datasets import MNIST

    present = _mnist_present(root)
    if not present and Path(root) != DEFAULT_ROOT:
        raise UserError(
            f"MNIST is not under {Path(root) / 'MNIST' / 'raw'}; put the four files {', '.join(MNIST_FILES)} there, "
            f"point data.dir / PYRO_VAE_DATA at a folder that has them, or unset both to download MNIST into {DEFAULT_ROOT}"
        )
    splits = []
    for train in (True, False):
        try:
            ds = MNIST(root, train=train, download=not present)
        except Exception as e:  # torchvision raises RuntimeError or URLError depending on what failed
            raise UserError(
                f"MNIST is not under {Path(root) / 'MNIST' / 'raw'} and could not be downloaded ({type(e).__name__}); "
                f"put the four files {', '.join(MNIST_FILES)} there, or point data.dir / PYRO_VAE_DATA at a folder that has them"
            ) from None
        splits.append(Split(ds.data.reshape(len(ds.data), -1).float() / 255.0, ds.targets.long()))
    return Dataset(splits[0], splits[1], (28, 28), 10)


def _mnist_present(root):
    raw = Path(root) / "MNIST" / "raw"
    return all((raw / name).exists() for name in MNIST_FILES)


def load_arrays(path, test_fraction=0.1):
    """User data from ``.npy`` (pixels only) or ``.npz`` (keys ``x``, optional ``y``, ``x_test``,
    ``y_test``). Images of shape (N, H, W) are flattened; without ``x_test`` the last
    ``test_fraction`` of the rows is held out for testing."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file {path} does not exist; check data.path")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UserError(f"cannot read {path} as a .npy/.npz array file ({e}); save it with numpy.save or numpy.savez") from None
    arrays = {"x": loaded} if isinstance(loaded, np.ndarray) else dict(loaded)
    if "x" not in arrays:
        raise UserError(f"{path} has no array named 'x'; save the pixels with numpy.savez(path, x=..., y=...)")
    x = _as_pixels(arrays["x"], path, "x")
    y = _as_labels(arrays.get("y"), len(x), path, "y")
    image_shape = arrays["x"].shape[1:] if arrays["x"].ndim == 3 else _guess_shape(x.shape[1])
    if "x_test" in arrays:
        train = Split(x, y)
        test = Split(_as_pixels(arrays["x_test"], path, "x_test"), _as_labels(arrays.get("y_test"), len(arrays["x_test"]), path, "y_test"))
        if test.x.shape[1] != x.shape[1]:
            raise UserError(f"{path}: x_test has {test.x.shape[1]} features per row but x has {x.shape[1]}")
    else:
        n_test = max(1, int(len(x) * test_fraction))
        train, test = Split(x, y).head(len(x) - n_test), Split(x[-n_test:], None if y is None else y[-n_test:])
    num_classes = int(y.max()) + 1 if y is not None else None
    return Dataset(train, test, tuple(image_shape), num_classes)


def _as_pixels(a, path, name):
    if a.dtype.kind not in "fiub" or a.ndim not in (2, 3):
        raise UserError(f"{path}: '{name}' must be a numeric array of shape (N, D) or (N, H, W), got {a.dtype} {a.shape}")
    if len(a) < 2:
        raise UserError(f"{path}: '{name}' needs at least 2 rows, got {len(a)}")
    x = torch.as_tensor(a.reshape(len(a), -1), dtype=torch.float32)
    if not torch.isfinite(x).all():
        raise UserError(f"{path}: '{name}' contains NaN or inf values; clean or drop those rows")
    return x


def _as_labels(a, n, path, name):
    if a is None:
        return None
    if a.dtype.kind not in "iu" or a.shape != (n,):
        raise UserError(f"{path}: '{name}' must be integer labels of shape ({n},), got {a.dtype} {a.shape}")
    if n and a.min() < 0:
        raise UserError(f"{path}: '{name}' has negative labels; labels must be 0..num_classes-1")
    return torch.as_tensor(a, dtype=torch.long)


def _guess_shape(dim):
    side = int(round(dim**0.5))
    return (side, side) if side * side == dim else (1, dim)


def load(cfg_data):
    ds = load_arrays(cfg_data.path) if cfg_data.path else load_mnist(data_root(cfg_data.dir))
    return Dataset(ds.train.head(cfg_data.limit), ds.test.head(cfg_data.test_limit), ds.image_shape, ds.num_classes)


def binarize_fixed(x, seed):
    """One Bernoulli draw of the pixels with a fixed seed: static binarization, and the
    reproducible test set for dynamically binarized runs."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=g)


def prepare(ds, binarize, seed):
    """Apply the binarization that is fixed once: static draws for train and test; the test set
    of a dynamic run gets one seeded draw so every evaluation sees the same images."""
    if binarize == "none":
        return ds
    if ((ds.train.x < 0) | (ds.train.x > 1)).any() or ((ds.test.x < 0) | (ds.test.x > 1)).any():
        raise UserError(f"data.binarize = \"{binarize}\" needs pixels in [0, 1]; rescale the data or set data.binarize = \"none\"")
    train = ds.train if binarize == "dynamic" else Split(binarize_fixed(ds.train.x, seed), ds.train.y)
    test = Split(binarize_fixed(ds.test.x, seed + 1), ds.test.y)
    return Dataset(train, test, ds.image_shape, ds.num_classes)
