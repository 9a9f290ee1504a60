"""Datasets as whole tensors on the training device: MNIST through torchvision, or the user's
own arrays. Batches are sliced from device memory; no per-item DataLoader transforms.

Also what is decided about data once, before training or evaluation: which files a config means,
their fingerprint (so a run refuses data that changed), the binarization fixed up front, the one
hold-out rule, and the checks that catch bad data before it becomes NaNs halfway through.
"""

import hashlib
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import noise
from .errors import UserError
from .files import check_regular_file
from .model import UNKNOWN

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass
class Split:
    """Pixels ``x`` (N, D) as floats in [0, 1] (or any reals for user data), labels ``y`` (N,) or
    None, and ``labelled`` (N,) bool: whose labels training may see (None: every one)."""

    x: torch.Tensor
    y: torch.Tensor | None
    labelled: torch.Tensor | None = None

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, idx):
        """Rows ``idx`` (a slice or an index tensor), with their labels."""
        return Split(self.x[idx], *(None if t is None else t[idx] for t in (self.y, self.labelled)))

    def to(self, device):
        return Split(self.x.to(device), *(None if t is None else t.to(device) for t in (self.y, self.labelled)))

    @property
    def observed_y(self):
        """The labels training sees: ``y`` with ``-1`` where the label is held back."""
        if self.y is None or self.labelled is None:
            return self.y
        return torch.where(self.labelled, self.y, UNKNOWN)

    def head(self, n):
        """The first ``n`` rows (all of them for ``n = 0``)."""
        return self if not n else self[:n]

    def split_off(self, fraction=0.1):
        """``(rest, held_out)``: the last ``fraction`` of the rows (at least one) held out. The
        package's one hold-out rule, for user arrays without a test set."""
        n_test = max(1, int(len(self) * fraction))
        return self[: len(self) - n_test], self[len(self) - n_test :]


@dataclass
class Dataset:
    train: Split
    test: Split
    image_shape: tuple  # (H, W) for plotting
    num_classes: int | None
    feature_map: object = None  # data.features: how a datum is shown as an image (features.FeatureMap)

    @property
    def input_dim(self):
        return self.train.x.shape[1]

    def to(self, device):
        return Dataset(self.train.to(device), self.test.to(device), self.image_shape, self.num_classes, self.feature_map)

    @property
    def picture_shape(self):
        """(H, W) of a datum drawn as an image (a code's is the images' it was made from)."""
        return self.image_shape if self.feature_map is None else self.feature_map.image_shape

    def pictures(self, x):
        """``(images, (H, W))``: data rows as images (features through the map that made them)."""
        return pictures(x, self.image_shape, self.feature_map)


def pictures(x, image_shape, feature_map=None):
    """Rows of data (or of decoder means) as images to draw, with their shape."""
    return (x, image_shape) if feature_map is None else (feature_map.decode(x), feature_map.image_shape)


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
    if not present:
        download_mnist(root)
    splits = []
    for train in (True, False):
        ds = MNIST(root, train=train)
        splits.append(Split(ds.data.reshape(len(ds.data), -1).float() / 255.0, ds.targets.long()))
    return Dataset(splits[0], splits[1], (28, 28), 10)


def download_mnist(root):
    """Download into a temporary folder beside ``root/MNIST`` and move it into place only once
    complete, so a failed or interrupted download leaves nothing behind."""
    from torchvision.datasets import MNIST

    root = Path(root)
    existed = root.exists()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".download-"))
    try:
        MNIST(staging, train=True, download=True)
        shutil.rmtree(root / "MNIST", ignore_errors=True)
        (staging / "MNIST").rename(root / "MNIST")
    except Exception as e:  # torchvision raises RuntimeError or URLError depending on what failed
        raise UserError(
            f"MNIST is not under {root / 'MNIST' / 'raw'} and could not be downloaded ({type(e).__name__}); "
            f"put the four files {', '.join(MNIST_FILES)} there, or point data.dir / PYRO_VAE_DATA at a folder that has them"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not existed and not any(root.iterdir()):
            root.rmdir()


def mnist_files(root):
    return [Path(root) / "MNIST" / "raw" / name for name in MNIST_FILES]


def _mnist_present(root):
    return all(path.exists() for path in mnist_files(root))


def load_arrays(path, test_fraction=0.1):
    """User data from ``.npy`` (pixels only) or ``.npz`` (keys ``x``, optional ``y``, ``x_test``,
    ``y_test``). Images of shape (N, H, W) are flattened; without ``x_test`` the last
    ``test_fraction`` of the rows is held out for testing."""
    path = Path(path)
    check_regular_file(path, "data file", "data.path")
    arrays = read_arrays(path)
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
        train, test = Split(x, y).split_off(test_fraction)
    num_classes = int(y.max()) + 1 if y is not None else None
    return Dataset(train, test, tuple(image_shape), num_classes)


def read_arrays(path):
    """Every array in the ``.npy`` or ``.npz`` file ``path``, by name (``x`` for a ``.npy``). NumPy
    reads an archive's members lazily, so they are all read here, where each way a file can be
    damaged (empty, truncated, a failed CRC, pickled objects, a member that is not an array) is
    one line."""
    fix = "save it with numpy.save or numpy.savez, without object arrays"
    try:
        # an open file of our own: NumPy leaves the one it opens unclosed when an archive is damaged
        with open(path, "rb") as f:
            loaded = np.load(f, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                return {"x": loaded}
            arrays = {name: loaded[name] for name in loaded.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read {path} as a .npy/.npz array file ({reason}); {fix}") from None
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise UserError(f"{path}: member '{name}' is not a NumPy array; {fix}")
    return arrays


def _as_pixels(a, path, name):
    if a.dtype.kind not in "fiub" or a.ndim not in (2, 3):
        raise UserError(f"{path}: '{name}' must be a numeric array of shape (N, D) or (N, H, W), got {a.dtype} {a.shape}")
    if len(a) < 2:
        raise UserError(f"{path}: '{name}' needs at least 2 rows, got {len(a)}")
    if not np.prod(a.shape[1:]):
        raise UserError(f"{path}: '{name}' has no features per row (shape {a.shape}); each row must hold a datum's values")
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


def load(cfg_data, source=None):
    """The config's data, limited as it says; ``source`` (a Dataset) stands in for its files."""
    ds = source
    if ds is None:
        ds = load_arrays(cfg_data.path) if cfg_data.path else load_mnist(data_root(cfg_data.dir))
    return Dataset(ds.train.head(cfg_data.limit), ds.test.head(cfg_data.test_limit), ds.image_shape, ds.num_classes, ds.feature_map)


def resolved_location(cfg_data):
    """``cfg_data`` with the places it means made absolute: a run records these, so any shell
    finds the same data whatever its ``PYRO_VAE_DATA``."""
    if cfg_data.features:
        return replace(cfg_data, dir="", path="", features=str(Path(cfg_data.features).resolve()))
    if cfg_data.path:
        return replace(cfg_data, dir="", path=str(Path(cfg_data.path).resolve()))
    return replace(cfg_data, dir=str(Path(data_root(cfg_data.dir)).resolve()), path="")


def fingerprint(cfg_data):
    """SHA-256 of the files the config's data come from (MNIST's four files, the user's array
    file, or the feature run's checkpoint): what a run stores to refuse, later, data that changed
    under it."""
    if cfg_data.features:
        files = [Path(cfg_data.features) / "checkpoint.pt"]
    else:
        files = [Path(cfg_data.path)] if cfg_data.path else mnist_files(data_root(cfg_data.dir))
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_dataset(cfg, source=None):
    """The config's data, binarized as configured, on the CPU (callers move what they use); with
    ``data.labelled`` the training split's labels are held back but for that many. ``source``
    stands in for the files the config names (``runfolder.load_dataset``'s features)."""
    ds = prepare(load(cfg.data, source), cfg.data.binarize, cfg.seed)
    if cfg.data.labelled and ds.num_classes is None:
        raise UserError(f"data.labelled = {cfg.data.labelled} keeps some labels, but the data have none; give 'y' in the data file, use MNIST, or set data.labelled = 0")
    if cfg.model.conditional and ds.num_classes is None:
        raise UserError("model.conditional = true needs labels; give 'y' in the data file or use MNIST")
    if cfg.data.labelled:
        train = ds.train
        ds = Dataset(Split(train.x, train.y, choose_labelled(train.y, cfg.data.labelled, ds.num_classes, cfg.seed)),
                     ds.test, ds.image_shape, ds.num_classes, ds.feature_map)
    return ds


def choose_labelled(y, n, num_classes, seed):
    """A mask of ``n`` images whose labels are kept, balanced across the classes (n // C of each,
    and one more of the first n % C classes in a seeded order), drawn by the run's seed."""
    if n > len(y):
        raise UserError(f"data.labelled = {n} asks for more labelled images than the {len(y)} training images; choose at most {len(y)}")
    if n < num_classes:
        raise UserError(f"data.labelled = {n} is fewer than one label per class ({num_classes} classes); choose at least {num_classes}")
    generator = noise.seeded(seed, "labelled_choice")
    extra = torch.randperm(num_classes, generator=generator)[: n % num_classes]
    mask = torch.zeros(len(y), dtype=torch.bool)
    for c in range(num_classes):
        members = (y == c).nonzero().squeeze(1)
        want = n // num_classes + int(c in extra)
        if len(members) < want:
            raise UserError(f"data.labelled = {n} needs {want} images of class {c}, but the training images have {len(members)}; choose fewer labels")
        mask[members[torch.randperm(len(members), generator=generator)[:want]]] = True
    return mask


def check_data(vae, ds, binarize):
    """Bad data is caught here, once, rather than as NaNs halfway through training."""
    for split in (ds.train, ds.test):
        if split.x.shape[1] != vae.input_dim:
            raise UserError(f"the data have {split.x.shape[1]} features per datum but the model expects {vae.input_dim}; use the data the run was trained on")
        if not torch.isfinite(split.x).all():
            raise UserError("the data contain NaN or inf values; clean or drop those rows before training")
        vae.check_labels(split.y, len(split))
        # a dynamic run's training pixels are grey here and become binary when each batch is drawn
        if not (split is ds.train and binarize == "dynamic"):
            vae.likelihood.check(split.x)


def binarize_fixed(x, seed, split):
    """One Bernoulli draw of the pixels of ``split`` (``"train"`` or ``"test"``) from the run's
    seed: static binarization, and the reproducible test set for dynamically binarized runs."""
    return torch.bernoulli(x, generator=noise.seeded(seed, f"{split}_pixels", device=x.device))


def prepare(ds, binarize, seed):
    """Apply the binarization that is fixed once: static draws for train and test; the test set
    of a dynamic run gets one seeded draw so every evaluation sees the same images."""
    if binarize == "none":
        return ds
    if ((ds.train.x < 0) | (ds.train.x > 1)).any() or ((ds.test.x < 0) | (ds.test.x > 1)).any():
        raise UserError(f"data.binarize = \"{binarize}\" needs pixels in [0, 1]; rescale the data or set data.binarize = \"none\"")
    train = ds.train if binarize == "dynamic" else Split(binarize_fixed(ds.train.x, seed, "train"), ds.train.y, ds.train.labelled)
    test = Split(binarize_fixed(ds.test.x, seed, "test"), ds.test.y)
    return Dataset(train, test, ds.image_shape, ds.num_classes, ds.feature_map)


def fixed_train_split(ds, binarize, seed):
    """The training split with fixed pixels, for reading a trained model rather than training it: a
    dynamic run's grey training images get the one draw static binarization would have made."""
    if binarize != "dynamic":
        return ds.train
    return Split(binarize_fixed(ds.train.x, seed, "train"), ds.train.y)
