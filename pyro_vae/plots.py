"""Every figure: image grids through torchvision, curves and histograms through matplotlib
(headless). Figures take tensors and numbers, never a model: drawing needs no model stack.
"""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from .files import atomic_write_bytes  # noqa: E402


def save_png(path, render):
    """Write a PNG atomically: ``render(file_object)`` draws into memory first."""
    buffer = io.BytesIO()
    render(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_figure(path, fig):
    save_png(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def image_grid(path, images, image_shape, nrow=8):
    """``images`` (N, D) in [0, 1] -> a PNG grid with ``nrow`` images per row."""
    pictures = images.detach().float().clamp(0, 1).reshape(-1, 1, *image_shape).cpu()
    save_png(path, lambda f: save_image(make_grid(pictures, nrow=nrow, padding=2, pad_value=0.5), f, format="png"))


def reconstruction_grid(path, originals, reconstructions, image_shape, cols=8):
    """Rows alternate: a row of data, then a row of their reconstructions."""
    rows = len(originals) // cols
    n = rows * cols
    pairs = torch.stack([originals[:n].reshape(rows, cols, -1), reconstructions[:n].reshape(rows, cols, -1)], dim=1)
    image_grid(path, pairs.reshape(2 * n, -1), image_shape, cols)


def elbo_curves(path, history):
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["train_elbo"] for row in history], "o-", label="train ELBO")
    ax.plot(epochs, [row["test_elbo"] for row in history], "s-", label="test ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per datum, higher is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(path, fig)


def diagnostics_figure(path, khat, ess, num_samples, khat_trust):
    """Histograms of the per-datum PSIS k-hat (with the ``khat_trust`` line) and ESS / K."""
    fitted = khat[torch.isfinite(khat)]
    fig, (ax_k, ax_e) = plt.subplots(1, 2, figsize=(10, 4))
    ax_k.hist(fitted.numpy(), bins=40, color="tab:blue")
    ax_k.axvline(khat_trust, color="tab:red", linestyle="--", label=f"{khat_trust}: above, not to be trusted")
    ax_k.set_xlabel("PSIS Pareto k-hat per datum")
    ax_k.set_ylabel("test data")
    unfitted = len(khat) - len(fitted)
    ax_k.set_title(f"k-hat ({unfitted} data with too few tail samples to fit)" if unfitted else "k-hat")
    ax_k.legend()
    ax_e.hist((ess / num_samples).numpy(), bins=40, range=(0, 1), color="tab:green")
    ax_e.set_xlabel(f"ESS / K  (K = {num_samples})")
    ax_e.set_title("effective sample size of the importance weights")
    fig.tight_layout()
    save_figure(path, fig)
