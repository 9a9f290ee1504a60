"""Every figure, through matplotlib (headless): image grids are torchvision's ``make_grid`` drawn
with a title and row labels, at a size a person can read. Figures take tensors and numbers, never a model: drawing needs no model stack.
"""

import io
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from .files import atomic_write_bytes  # noqa: E402


def save_png(path, render):
    """Write a PNG atomically: ``render(file_object)`` draws into memory first."""
    buffer = io.BytesIO()
    render(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_figure(path, fig):
    save_png(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


# inches per image in a grid: 28-pixel digits drawn about 2.5 times their size at 100 dpi
CELL = 0.7
PAD = 2


def image_grid(path, images, image_shape, nrow=8, title=None, row_labels=None, col_labels=None, xlabel=None, ylabel=None):
    """``images`` (N, D) in [0, 1] -> a PNG of a grid with ``nrow`` images per row, drawn large
    enough to read, with a title and (optionally) a label per row and per column."""
    pictures = images.detach().float().clamp(0, 1).reshape(-1, 1, *image_shape).cpu()
    grid = make_grid(pictures, nrow=nrow, padding=PAD, pad_value=1.0)[0]
    rows, cols = -(-len(pictures) // nrow), min(nrow, len(pictures))
    cell = min(CELL, 12 / cols) / 28  # inches per pixel
    # margins in inches, so labels keep their size whatever the grid's
    left = (1.3 if row_labels else 0.15) + (0.3 if ylabel else 0)
    width = max(grid.shape[1] * cell + left + 0.15, 4.5)
    title_lines = textwrap.wrap(title, int(width * 9)) if title else []
    top = 0.2 + 0.22 * len(title_lines) + (0.3 if col_labels else 0)
    bottom = 0.4 if xlabel else 0.15
    height = grid.shape[0] * cell + top + bottom
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes([left / width, bottom / height, 1 - (left + 0.15) / width, 1 - (top + bottom) / height])
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    h, w = image_shape[0] + PAD, image_shape[1] + PAD
    ax.set_yticks([PAD + r * h + image_shape[0] / 2 for r in range(rows)] if row_labels else [], row_labels or [])
    ax.set_xticks([PAD + c * w + image_shape[1] / 2 for c in range(cols)] if col_labels else [], col_labels or [])
    ax.tick_params(length=0, labelsize=9)
    ax.xaxis.set_ticks_position("top")
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title_lines:
        fig.text(0.5, 1 - 0.1 / height, "\n".join(title_lines), ha="center", va="top", fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    save_figure(path, fig)


def reconstruction_grid(path, originals, reconstructions, image_shape, cols=8):
    """Rows alternate: a row of data, then a row of their reconstructions."""
    rows = len(originals) // cols
    n = rows * cols
    pairs = torch.stack([originals[:n].reshape(rows, cols, -1), reconstructions[:n].reshape(rows, cols, -1)], dim=1)
    image_grid(path, pairs.reshape(2 * n, -1), image_shape, cols, title="test data and their reconstructions E[x | z = mean of q(z|x)]",
               row_labels=["data", "reconstruction"] * rows)


def latent_map(path, points, labels, axis_names, title):
    """A scatter of 2-D points (N, 2), coloured by integer label with a legend (one colour without labels)."""
    fig, ax = plt.subplots(figsize=(8, 7))
    points = points.cpu().numpy()
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.5, color="tab:blue", linewidths=0)
    else:
        labels = labels.cpu().numpy()
        classes = sorted(set(labels.tolist()))
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20", max(len(classes), 2))
        for i, c in enumerate(classes):
            chosen = labels == c
            ax.scatter(points[chosen, 0], points[chosen, 1], s=3, alpha=0.6, color=cmap(i % cmap.N), linewidths=0, label=str(c))
        ax.legend(title="label", markerscale=5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(path, fig)


def elbo_curves(path, history):
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["train_elbo"] for row in history], "o-", label="train ELBO")
    ax.plot(epochs, [row["test_elbo"] for row in history], "s-", label="test ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per datum, higher is better)")
    ax.set_title("training curve")
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


def forest_plot(path, labels, estimates, lows, highs, xlabel):
    """One horizontal line per row: the estimate as a dot and its interval as a bar, top to
    bottom in the order given, with the line of no difference at 0."""
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.45 * len(labels)))
    rows = list(range(len(labels)))[::-1]
    spans = [[e - low for e, low in zip(estimates, lows)], [high - e for e, high in zip(estimates, highs)]]
    ax.errorbar(estimates, rows, xerr=spans, fmt="o", color="black", ecolor="black", capsize=4)
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(rows, labels)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_xlabel("\n".join(textwrap.wrap(xlabel, 55)))
    fig.tight_layout()
    save_figure(path, fig)
