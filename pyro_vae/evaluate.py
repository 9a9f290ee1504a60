"""`pyro-vae evaluate`: the importance-weighted test log p(x) of a trained run, with diagnostics.

Which quantity: log p(x) for an unconditional run; log p(x | y), y the true test label, for a
conditional VAE (its labels are inputs); log p(x) with y summed out over the classes for a
semi-supervised run (its labels are a Pyro site), which also reports its classifier's accuracy;
of the features rather than the images (``log p(features)``) for a run on ``data.features``.

Evaluates on the run's test set, binarized as the run was trained (a dynamically binarized run
gets the same seeded draw every time, so numbers are reproducible), and writes into the run folder
a record of the evaluation under its settings (``evaluations/log_px-K...json``,
:mod:`pyro_vae.records`: what ``pyro-vae compare`` reads), ``log_px.csv`` (one row per test
datum, the latest evaluation's) and ``diagnostics.png`` (k-hat and ESS histograms).
"""

import csv
import io
import json
from pathlib import Path

from . import noise, plots, records, sizes
from .distributed import resolve_device
from .errors import UserError
from .files import atomic_write_text
from .marginal import KHAT_TRUST, estimate_log_px, estimate_log_px_summed
from .records import finite_or_none
from .runfolder import load_split

CSV_FIELDS = ("index", "label", "log_px", "elbo", "gap", "ess", "khat")


def check_args(num_samples, limit, batch_size, chunk_size, seed):
    noise.check_seed(seed, "--seed")
    if num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {num_samples} (the papers' figure uses 5000)")
    if limit < 0:
        raise UserError(f"--limit must be 0 (the whole test set) or a positive number of test images, got {limit}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if chunk_size < 0:
        raise UserError(f"--chunk-size must be a positive number of samples, or 0 to choose one for memory, got {chunk_size}")


def evaluate_run(run_dir, *, num_samples=5000, limit=0, chunk_size=0, batch_size=100, seed=0, device="auto", json_summary=False):
    """log p(x) of the run's test set (its first ``limit`` images); prints the table (and with
    ``json_summary`` a JSON line) and writes the evaluation's record, ``log_px.csv`` and
    ``diagnostics.png``."""
    check_args(num_samples, limit, batch_size, chunk_size, seed)
    run_dir = Path(run_dir)
    device = resolve_device(device, option="--device")
    cfg, vae, payload, test = load_split(run_dir, "test", limit, device)
    # a batch's K log weights are kept (float64) for the ESS and the Pareto fit
    sizes.check_tensor_fits(2 * num_samples * min(batch_size, len(test)), f"{num_samples:,} log weights for each of a batch's images",
                            "--num-samples", "cpu")
    options = dict(num_samples=num_samples, chunk_size=chunk_size or None, batch_size=batch_size, seed=seed, progress=True)
    if vae.semi_supervised:
        result = estimate_log_px_summed(vae, test.x, **options)
    else:
        result = estimate_log_px(vae, test.x, test.y, **options)
    summary = {"quantity": quantity(vae, cfg), **result.summary()}
    if vae.semi_supervised:
        summary["accuracy"] = classifier_accuracy(vae, test.x, test.y)
    record = records.new_record(
        "log_px", {"num_samples": num_samples, "limit": limit, "seed": seed},
        records.images(test, limit), payload.get("data_fingerprint"), summary,
        {"log_px": result.log_px.tolist(), "elbo": result.elbo.tolist(), "ess": result.ess.tolist(), "khat": result.khat.tolist()},
        quantity=quantity(vae, cfg))
    stored = records.write(run_dir, records.log_px_name(num_samples, limit, seed), record)
    atomic_write_text(run_dir / "log_px.csv", per_datum_csv(result, test.y))
    plots.diagnostics_figure(run_dir / "diagnostics.png", result.khat, result.ess, result.num_samples, KHAT_TRUST)
    print(table(summary, run_dir, cfg.data.binarize, vae, vae.family.name, stored))
    if json_summary:
        print(json.dumps({key: finite_or_none(value) for key, value in summary.items()}))
    return result


def quantity(vae, cfg):
    """What the run's log-likelihood is of (the summary's and the record's ``quantity``): of the
    feature run's codes, not of images, for ``data.features``."""
    of = "features" if cfg.data.features else "x"
    if vae.semi_supervised:
        return f"log p({of})"  # the label summed out
    return f"log p({of} | y)" if vae.num_classes is not None else f"log p({of})"


def classifier_accuracy(vae, x, y, batch_size=1000):
    """The fraction of ``x`` whose most probable class under q(y|x) is the label ``y``."""
    hits = sum((vae.classify(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum().item() for i in range(0, len(x), batch_size))
    return hits / len(x)


def per_datum_csv(result, labels):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    columns = (result.log_px, result.elbo, result.gap, result.ess, result.khat)
    for i, values in enumerate(zip(*(c.tolist() for c in columns))):
        label = "" if labels is None else int(labels[i])
        writer.writerow([i, label, *(f"{v:.6f}" for v in values)])
    return buffer.getvalue()


def table(s, run_dir, binarize, vae, family, stored):
    what = s["quantity"] + (", y = true test label" if "| y)" in s["quantity"] else ", y summed out" if vae.semi_supervised else "")
    test_set = {"dynamic": "one fixed-seed binarization", "static": "static binarization", "none": "not binarized"}[binarize]
    rows = [
        f"{run_dir}: {s['n']} test data ({test_set}), K = {s['num_samples']} importance samples per datum, proposal q(z|x) (guide family: {family})",
        f"{'':30} {'mean':>10} {'std. err.':>10}   (nats per datum)",
        f"{what:30} {s['log_px']:10.3f} {s['log_px_stderr']:10.3f}",
        f"{'ELBO':30} {s['elbo']:10.3f} {s['elbo_stderr']:10.3f}",
        f"{'gap = log p(x) - ELBO':30} {s['gap']:10.3f} {s['gap_stderr']:10.3f}   (KL from q(z|x) to p(z|x))",
        f"{'ESS (of K)':30} {s['ess_mean']:10.1f}",
        f"{'PSIS k-hat, max':30} {s['khat_max']:10.2f}",
        f"{'data with k-hat > 0.7':30} {100 * s['khat_frac_above_0_7']:9.1f}%   (their estimates are not to be trusted)",
        f"per-datum results: {run_dir / 'log_px.csv'}; k-hat and ESS histograms: {run_dir / 'diagnostics.png'}",
        f"record (read by `pyro-vae compare`): {stored}",
    ]
    if "accuracy" in s:
        rows.insert(-1, f"{'classifier q(y|x) accuracy':30} {s['accuracy']:10.4f}   (test images whose most probable class is their label)")
        rows.insert(1, f"K importance samples for each of the {vae.num_classes} classes, log p(x) = logsumexp over y of log p(x, y); "
                       "ESS and k-hat of each datum's most probable class")
    return "\n".join(rows)
