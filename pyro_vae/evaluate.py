"""`pyro-vae evaluate`: the importance-weighted test log p(x) of a trained run, with diagnostics.

Evaluates on the run's test set, binarized as the run was trained (a dynamically binarized run
gets the same seeded draw every time, so numbers are reproducible), and writes into the run folder
``log_px.csv`` (one row per test datum) and ``diagnostics.png`` (k-hat and ESS histograms).
"""

import csv
import io
import json
import math
from pathlib import Path

import torch

from . import checkpoint, plots, train
from .errors import UserError
from .marginal import KHAT_TRUST, estimate_log_px

CSV_FIELDS = ("index", "label", "log_px", "elbo", "gap", "ess", "khat")


def check_args(args):
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {args.num_samples} (the papers' figure uses 5000)")
    if args.limit < 0:
        raise UserError(f"--limit must be 0 (the whole test set) or a positive number of test images, got {args.limit}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.chunk_size < 0:
        raise UserError(f"--chunk-size must be a positive number of samples, or 0 to choose one for memory, got {args.chunk_size}")


def evaluate_run(args):
    check_args(args)
    run_dir = Path(args.run_dir)
    device = train.resolve_device(args.device, option="--device")
    cfg, vae, _ = checkpoint.load_run(run_dir, device)
    ds = train.load_dataset(cfg)
    train.check_data(vae, ds, cfg.data.binarize)
    test = ds.test.head(args.limit).to(device)
    conditional = vae.num_classes is not None
    result = estimate_log_px(
        vae,
        test.x,
        test.y if conditional else None,
        num_samples=args.num_samples,
        chunk_size=args.chunk_size or None,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=True,
    )
    summary = result.summary()
    checkpoint.atomic_write_text(run_dir / "log_px.csv", per_datum_csv(result, test.y))
    plots.save_png(run_dir / "diagnostics.png", lambda f: diagnostics_figure(result, f))
    print(table(summary, run_dir, cfg.data.binarize, conditional))
    if args.json:
        print(json.dumps({key: finite_or_none(value) for key, value in summary.items()}))
    return result


def finite_or_none(value):
    """JSON has no inf or NaN: an infinite k-hat or a one-datum standard error becomes null."""
    return value if isinstance(value, int) or math.isfinite(value) else None


def per_datum_csv(result, labels):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    columns = (result.log_px, result.elbo, result.gap, result.ess, result.khat)
    for i, values in enumerate(zip(*(c.tolist() for c in columns))):
        label = "" if labels is None else int(labels[i])
        writer.writerow([i, label, *(f"{v:.6f}" for v in values)])
    return buffer.getvalue()


def table(s, run_dir, binarize, conditional):
    quantity = "log p(x | y), y = true test label" if conditional else "log p(x)"
    test_set = {"dynamic": "one fixed-seed binarization", "static": "static binarization", "none": "not binarized"}[binarize]
    rows = [
        f"{run_dir}: {s['n']} test data ({test_set}), K = {s['num_samples']} importance samples per datum, proposal q(z|x)",
        f"{'':30} {'mean':>10} {'std. err.':>10}   (nats per datum)",
        f"{quantity:30} {s['log_px']:10.3f} {s['log_px_stderr']:10.3f}",
        f"{'ELBO':30} {s['elbo']:10.3f} {s['elbo_stderr']:10.3f}",
        f"{'gap = log p(x) - ELBO':30} {s['gap']:10.3f} {s['gap_stderr']:10.3f}   (KL from q(z|x) to p(z|x))",
        f"{'ESS (of K)':30} {s['ess_mean']:10.1f}",
        f"{'PSIS k-hat, max':30} {s['khat_max']:10.2f}",
        f"{'data with k-hat > 0.7':30} {100 * s['khat_frac_above_0_7']:9.1f}%   (their estimates are not to be trusted)",
        f"per-datum results: {run_dir / 'log_px.csv'}; k-hat and ESS histograms: {run_dir / 'diagnostics.png'}",
    ]
    return "\n".join(rows)


def diagnostics_figure(result, f):
    import matplotlib.pyplot as plt

    khat = result.khat[torch.isfinite(result.khat)]
    fig, (ax_k, ax_e) = plt.subplots(1, 2, figsize=(10, 4))
    ax_k.hist(khat.numpy(), bins=40, color="tab:blue")
    ax_k.axvline(KHAT_TRUST, color="tab:red", linestyle="--", label="0.7: above, not to be trusted")
    ax_k.set_xlabel("PSIS Pareto k-hat per datum")
    ax_k.set_ylabel("test data")
    unfitted = len(result.khat) - len(khat)
    ax_k.set_title(f"k-hat ({unfitted} data with too few tail samples to fit)" if unfitted else "k-hat")
    ax_k.legend()
    ax_e.hist((result.ess / result.num_samples).numpy(), bins=40, range=(0, 1), color="tab:green")
    ax_e.set_xlabel(f"ESS / K  (K = {result.num_samples})")
    ax_e.set_title("effective sample size of the importance weights")
    fig.tight_layout()
    fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
