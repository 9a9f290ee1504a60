"""Figures: image grids through torchvision, curves through matplotlib (headless)."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from .checkpoint import atomic_write_bytes  # noqa: E402


def save_png(path, render):
    """Write a PNG atomically: ``render(file_object)`` draws into memory first."""
    buffer = io.BytesIO()
    render(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def image_grid(path, images, image_shape, nrow=8):
    """``images`` (N, D) in [0, 1] -> a PNG grid with ``nrow`` images per row."""
    pictures = images.detach().float().clamp(0, 1).reshape(-1, 1, *image_shape).cpu()
    save_png(path, lambda f: save_image(make_grid(pictures, nrow=nrow, padding=2, pad_value=0.5), f, format="png"))


def sample_grid(vae, n_per_row=8, num_rows=8):
    """Prior samples: 64 images, or for a conditional VAE one row per class (digits 0 to 9)."""
    if vae.num_classes:
        labels = torch.arange(vae.num_classes, device=vae.device).repeat_interleave(n_per_row)
        return vae.sample(len(labels), y=labels), n_per_row
    return vae.sample(n_per_row * num_rows), n_per_row


def write_run_figures(out, vae, ds, history):
    """samples.png, reconstructions.png and loss.png for a finished run."""
    images, nrow = sample_grid(vae)
    image_grid(out / "samples.png", images, ds.image_shape, nrow)
    cols = min(8, len(ds.test))
    rows = min(4, len(ds.test) // cols)
    x = ds.test.x[: rows * cols]
    recon = vae.reconstruct(x, None if ds.test.y is None else ds.test.y[: rows * cols])
    # rows alternate: a row of test images, then a row of their reconstructions
    pairs = torch.stack([x.reshape(rows, cols, -1), recon.reshape(rows, cols, -1)], dim=1).reshape(2 * rows * cols, -1)
    image_grid(out / "reconstructions.png", pairs, ds.image_shape, cols)
    save_png(out / "loss.png", lambda f: elbo_curves(history, f))


def elbo_curves(history, f):
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["train_elbo"] for row in history], "o-", label="train ELBO")
    ax.plot(epochs, [row["test_elbo"] for row in history], "s-", label="test ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per datum, higher is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
