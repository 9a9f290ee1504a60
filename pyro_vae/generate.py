"""Decode prior samples of a trained run into an image grid (.png) or arrays (.npz)."""

import io

import numpy as np
import pyro
import torch

from . import noise, sizes
from .data import pictures
from .errors import UserError
from .files import atomic_write_bytes
from .runfolder import class_row_labels, feature_map, load_run


def labels_for(vae, n, digit, same_style):
    """The label of every image to draw (None for an unconditional VAE) and the grid's row length."""
    if vae.num_classes is None:
        if digit is not None or same_style:
            raise UserError("--digit and --same-style need a conditional run (trained with model.conditional = true)")
        return None, 8 if n >= 8 else n
    digit = "all" if digit is None else digit
    if digit == "all":
        return vae.labels_per_class(n), n
    if same_style:
        raise UserError("--same-style draws one style per column across all digits; use it with --digit all")
    # an int from Python or the CLI's text; isascii keeps out digits of other scripts ("٣")
    text = str(digit)
    if not (text.isascii() and text.isdigit()) or int(text) >= vae.num_classes:
        raise UserError(f"--digit must be 'all' or a class from 0 to {vae.num_classes - 1}, got {digit!r}")
    return torch.full((n,), int(text), device=vae.device), 8 if n >= 8 else n


def draw(vae, n, digit=None, same_style=False, seed=0):
    """``(images (N, D) in [0, 1], labels (N,) or None, row length)``; reproducible for a seed.

    Each image is E[x | z, y] with z ~ p(z). With ``digit="all"`` image ``i * n + j`` has label i
    (one row per class); ``same_style`` draws only ``n`` values z_j and gives image ``i * n + j``
    z_j, so column j is one style written as every class.
    """
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    noise.check_seed(seed, "--seed")
    sizes.check_tensor_fits(n * (vae.num_classes or 1) * (vae.input_dim + vae.latent_dim), f"{n:,} images", "--n", vae.device)
    labels, nrow = labels_for(vae, n, digit, same_style)
    pyro.set_rng_seed(seed)
    count = n if labels is None else len(labels)
    z = None
    if same_style:
        z = vae.prior_distribution().sample((n,)).repeat(vae.num_classes, 1)
    images = vae.sample(count, y=labels, z=z)
    return images, labels, nrow


def generate_run(run_dir, out, n=64, digit=None, same_style=False, seed=0):
    if out.suffix not in (".png", ".npz"):
        raise UserError(f"--out must end in .png (image grid) or .npz (arrays), got {out.name}")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist; create it or choose another --out")
    cfg, vae, payload = load_run(run_dir)
    images, labels, nrow = draw(vae, n, digit, same_style, seed)
    images, image_shape = pictures(images, tuple(payload["image_shape"]), feature_map(cfg))
    if out.suffix == ".png":
        from .plots import image_grid  # matplotlib and torchvision: only where a figure is drawn

        what = "one z per column, shared by every label" if same_style else "z ~ p(z)"
        rows = class_row_labels(vae, n) if labels is not None and digit in (None, "all") else None
        title = f"{run_dir}: E[x | z{', y' if labels is not None else ''}], {what}"
        if labels is not None and rows is None:
            title += f", label {int(labels[0])}"
        image_grid(out, images, image_shape, nrow, title=title, row_labels=rows)
        return
    labels = np.full(len(images), -1, dtype=np.int64) if labels is None else labels.cpu().numpy().astype(np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, images=images.reshape(-1, *image_shape).cpu().numpy().astype(np.float32), labels=labels)
    atomic_write_bytes(out, buffer.getvalue())
