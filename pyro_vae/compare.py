r"""`pyro-vae compare`: the table of several runs' test log p(x), with paired differences.

Reads each run's stored evaluations (:mod:`pyro_vae.records`), ``config.toml`` and
``metrics.csv``; loads no checkpoint and imports no training code.

Runs whose configs differ only in ``seed`` form one group, one row: its per-image values are the
means over its runs, :math:`\bar v_i = \frac1S \sum_s v_{s,i}`; the row's log p(x) is
:math:`\frac1n \sum_i \bar v_i` with the standard error over images,
:math:`\mathrm{sd}_i(\bar v_i) / \sqrt n`, and the spread between seeds is the standard deviation
of the S runs' means. A row is labelled by the config keys in which the groups differ.

Against the baseline group A, a group B's paired difference is computed image by image,

.. math::
    d_i = \bar v^B_i - \bar v^A_i, \qquad \bar d = \frac1n \sum_i d_i, \qquad
    \mathrm{se}(\bar d) = \frac{\mathrm{sd}_i(d_i)}{\sqrt n}, \qquad
    \bar d \pm z_{0.975}\, \mathrm{se}(\bar d)

(the normal approximation, for the hundreds of images an evaluation covers). Because both runs
see the same images, the images' own difficulty cancels from :math:`d_i`: the paired standard
error is usually several times smaller than either run's own. Pairing needs the same images: the
two groups' evaluations must cover the same set of test images (by the fingerprint of their
pixels), so groups of seeds are compared with the same seeds where the seed draws the binarized
test set (``data.binarize`` dynamic or static).

What would mislead is refused, in one line (a ``UserError``): a run with no stored evaluation,
different test images or binarizations, different quantities (log p(x) against log p(x | y)), and
different K unless ``allow_different_k`` (then the caller says so beside the table).

For data that are not binary, bits per dimension are :math:`-\widehat{\log p}(x) / (D \ln 2)`,
of the data in the units the model saw them (no dequantization offset).
"""

import dataclasses
import json
import math
import re
import statistics
from pathlib import Path

import numpy as np

from . import config as config_lib
from . import records
from .errors import UserError
from .runfolder import read_config, read_metrics

Z_95 = statistics.NormalDist().inv_cdf(0.975)


def compare(runs, baseline=None, num_samples=None, allow_different_k=False):
    """One plain dict per row (a run, or a group of runs differing only in seed), the baseline's
    group first; see the module docstring for what each number is. ``baseline`` (default: the
    first run) is added to ``runs`` if it is not among them."""
    runs = [Path(r) for r in runs]
    if baseline is not None:
        baseline = Path(baseline)
        runs = [baseline] + [r for r in runs if r.resolve() != baseline.resolve()]
    if not runs:
        raise UserError("give at least one run folder to compare")
    seen = set()
    for run in runs:
        if run.resolve() in seen:
            raise UserError(f"{run} is given twice; name each run folder once")
        seen.add(run.resolve())
    configs = {run: read_config(run) for run in runs}
    chosen = choose_records(runs, num_samples, allow_different_k)
    check_comparable(runs, chosen)
    groups = group_by_config(runs, configs)
    labels = group_labels(groups, configs)
    base = groups[0]
    check_paired(groups, chosen)
    base_values = group_values(base, chosen, "log_px")
    rows = []
    for group, label in zip(groups, labels):
        row = summarize(group, label, chosen, configs)
        if group is not base:
            d = group_values(group, chosen, "log_px") - base_values
            row.update(paired_difference(d))
        row["baseline"] = group is base
        row["baseline_label"] = labels[0]
        rows.append(row)
    return rows


# -- which evaluation of each run --------------------------------------------------------
def settings_of(record):
    return record["settings"]["num_samples"], record["images"]["count"]


def choose_records(runs, num_samples, allow_different_k):
    """``{run: record}``: one evaluation per run, all on the same number of test
    images and, unless ``allow_different_k``, with the same K; the most images, then the largest K."""
    found = {}
    for run in runs:
        stored = records.read(run, "log_px")
        if num_samples is not None:
            stored = [r for r in stored if r["settings"]["num_samples"] == num_samples]
        if not stored:
            k = num_samples or 1000
            raise UserError(f"{run} has no stored evaluation{'' if num_samples is None else f' with K = {num_samples}'}; "
                            f"make one with `pyro-vae evaluate {run} --num-samples {k}` (add --limit N to use the first N test images)")
        found[run] = stored
    common = set.intersection(*({settings_of(r) for r in stored} for stored in found.values()))
    if common:
        k, n = max(common, key=lambda s: (s[1], s[0]))
        return {run: min((r for r in stored if settings_of(r) == (k, n)), key=lambda r: r["settings"]["seed"])
                for run, stored in found.items()}
    counts = set.intersection(*({r["images"]["count"] for r in stored} for stored in found.values()))
    if not counts:
        what = "; ".join(f"{run}: {', '.join(sorted({str(r['images']['count']) for r in stored}))} images" for run, stored in found.items())
        raise UserError(f"the runs' evaluations cover different test images ({what}); evaluate every run with the same --limit")
    n = max(counts)
    if not allow_different_k:
        what = "; ".join(f"{run}: K = {', '.join(str(k) for k in sorted({r['settings']['num_samples'] for r in stored}))}"
                         for run, stored in found.items())
        raise UserError(f"the runs were evaluated with different K ({what}), and log p(x) estimates rise with K; evaluate them with "
                        "the same --num-samples, or pass --allow-different-k to compare anyway")
    return {run: max((r for r in stored if r["images"]["count"] == n), key=lambda r: r["settings"]["num_samples"])
            for run, stored in found.items()}


def check_comparable(runs, chosen):
    quantities = {chosen[run].get("quantity") for run in runs}
    if len(quantities) > 1:
        what = "; ".join(f"{run}: {chosen[run].get('quantity')}" for run in runs)
        raise UserError(f"the runs' evaluations measure different quantities ({what}); compare conditional runs with conditional runs")


# -- groups of seeds and their labels ------------------------------------------------------
def flat_config(table, defaults=None, prefix=""):
    """``{"model.prior": "vamp(components=500)", ...}``: every key of a run's config table, values
    as text, the defaults filling keys the run's version did not have yet."""
    defaults = config_lib.Config() if defaults is None else defaults
    flat = {}
    for f in dataclasses.fields(defaults):
        default, key = getattr(defaults, f.name), f"{prefix}{f.name}"
        value = table.get(f.name, {} if dataclasses.is_dataclass(default) else default)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            flat.update(flat_config(value, default, f"{key}."))
        else:
            flat[key] = render(value)
    return flat


def render(value):
    """A config value as a label shows it: ``vamp(components=500)`` for ``{type = "vamp", components = 500}``."""
    if isinstance(value, dict):
        rest = ", ".join(f"{k}={render(v)}" for k, v in value.items() if k != "type")
        return f"{value.get('type', '')}({rest})" if rest else str(value.get("type", "{}"))
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render(v) for v in value) + "]"
    return str(value)


def group_by_config(runs, configs):
    """Runs in order of first appearance, those whose configs differ only in ``seed`` together."""
    groups = {}
    for run in runs:
        key = tuple(sorted((k, v) for k, v in flat_config(configs[run]).items() if k != "seed"))
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def group_labels(groups, configs):
    """Each group's label: the config keys in which the groups differ, ``key=value`` joined by
    ", "; with nothing to tell them apart (one group), its run folder's name."""
    flats = [flat_config(configs[group[0]]) for group in groups]
    keys = [k for k in flats[0] if k != "seed" and len({flat.get(k) for flat in flats}) > 1]
    if not keys:
        return [group[0].name if len(group) == 1 else f"{group[0].name} (and {len(group) - 1} more)" for group in groups]
    return [", ".join(f"{k}={flat[k]}" for k in keys) for flat in flats]


def check_paired(groups, chosen):
    """Refuse to pair groups whose evaluations cover different test images (their pixels' fingerprints)."""
    base = groups[0]
    base_images = {chosen[run]["images"]["fingerprint"] for run in base}
    for group in groups[1:]:
        if {chosen[run]["images"]["fingerprint"] for run in group} != base_images:
            raise UserError(
                f"{', '.join(map(str, group))} and the baseline {', '.join(map(str, base))} were evaluated on different test images "
                "(same number, different pixels: another binarization, seed or data set); a paired comparison needs the same images: "
                "compare runs of the same data.binarize and data, and with binarize = dynamic or static, the same seeds")


def group_values(group, chosen, key):
    """(n,) per-image values of ``key`` averaged over the group's runs."""
    return np.mean([np.asarray(chosen[run]["per_image"][key], dtype=np.float64) for run in group], axis=0)


# -- the numbers -----------------------------------------------------------------------------
def stderr(values):
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def paired_difference(d):
    """The mean of per-image differences ``d`` (n,), its standard error and 95% interval."""
    mean, se = float(np.mean(d)), stderr(d)
    low, high = (None, None) if se is None else (mean - Z_95 * se, mean + Z_95 * se)
    return {"diff": mean, "diff_stderr": se, "diff_ci_low": low, "diff_ci_high": high,
            "diff_ci_contains_zero": None if se is None else low <= 0 <= high}


def summarize(group, label, chosen, configs):
    first = chosen[group[0]]
    log_px = group_values(group, chosen, "log_px")
    elbo = group_values(group, chosen, "elbo")
    means = [float(np.mean(chosen[run]["per_image"]["log_px"])) for run in group]
    khat = [np.asarray([math.inf if k is None else k for k in chosen[run]["per_image"]["khat"]]) for run in group]
    metrics = [read_metrics(run) for run in group]
    explored = [records.read(run, "explore") for run in group]
    ks = sorted({chosen[run]["settings"]["num_samples"] for run in group})
    binary = all(chosen[run]["images"]["binary"] for run in group)
    row = {
        "label": label,
        "runs": [str(run) for run in group],
        "seeds": [configs[run].get("seed", config_lib.Config.seed) for run in group],
        "num_seeds": len(group),
        "quantity": first.get("quantity"),
        "num_samples": ks[0] if len(ks) == 1 else ks,
        "n": first["images"]["count"],
        "log_px": float(np.mean(log_px)),
        "log_px_stderr": stderr(log_px),
        "log_px_seed_spread": statistics.stdev(means) if len(means) > 1 else None,
        "bits_per_dim": None if binary else -float(np.mean(log_px)) / (first["images"]["input_dim"] * math.log(2)),
        "elbo": float(np.mean(elbo)),
        "gap": float(np.mean(log_px - elbo)),
        "gap_stderr": stderr(log_px - elbo),
        "khat_frac_above_0_7": float(np.mean([np.mean(k > 0.7) for k in khat])),
        "active_units": float(np.mean([e[0]["summary"]["active_units"] for e in explored])) if all(explored) else None,
        "epochs": int(max(m[-1]["epoch"] for m in metrics)) if all(metrics) else None,
        "train_seconds": float(np.mean([sum(r["seconds"] for r in m) for m in metrics])) if all(metrics) else None,
        "last_test_elbo": float(np.mean([m[-1]["test_elbo"] for m in metrics])) if all(metrics) else None,
    }
    for key in ("diff", "diff_stderr", "diff_ci_low", "diff_ci_high", "diff_ci_contains_zero"):
        row[key] = None
    return row


# -- the table as text, Markdown, LaTeX or JSON ---------------------------------------------------
def cells(rows):
    """``(header, [cells per row])`` of the columns some row has a value for, as plain text."""
    def pm(value, err, sign=False):
        text = f"{value:+.2f}" if sign else f"{value:.2f}"
        return text if err is None else f"{text} ± {err:.2f}"

    columns = [
        ("run", lambda r: r["label"] + (" (baseline)" if r["baseline"] else "")),
        ("seeds", lambda r: str(r["num_seeds"])),
        (rows[0]["quantity"] or "log p(x)", lambda r: pm(r["log_px"], r["log_px_stderr"])),
        ("between seeds (sd)", lambda r: "" if r["log_px_seed_spread"] is None else f"{r['log_px_seed_spread']:.2f}"),
        ("bits/dim", lambda r: "" if r["bits_per_dim"] is None else f"{r['bits_per_dim']:.3f}"),
        ("ELBO", lambda r: f"{r['elbo']:.2f}"),
        ("gap", lambda r: pm(r["gap"], r["gap_stderr"])),
        ("k-hat > 0.7", lambda r: f"{100 * r['khat_frac_above_0_7']:.1f}%"),
        ("active units", lambda r: "" if r["active_units"] is None else f"{r['active_units']:g}"),
        ("last test ELBO", lambda r: "" if r["last_test_elbo"] is None else f"{r['last_test_elbo']:.2f}"),
        ("epochs", lambda r: "" if r["epochs"] is None else str(r["epochs"])),
        ("train s", lambda r: "" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"),
        ("vs baseline (paired)", lambda r: "" if r["diff"] is None else pm(r["diff"], r["diff_stderr"], sign=True)),
        ("95% interval", lambda r: "" if r["diff_ci_low"] is None else
            f"[{r['diff_ci_low']:+.2f}, {r['diff_ci_high']:+.2f}]" + (" includes 0" if r["diff_ci_contains_zero"] else "")),
    ]
    table = [[cell(r) for _, cell in columns] for r in rows]
    keep = [j for j in range(len(columns)) if j < 3 or any(line[j] for line in table)]
    return [columns[j][0] for j in keep], [[line[j] for j in keep] for line in table]


def caption(rows):
    first = rows[0]
    ks = {k for r in rows for k in (r["num_samples"] if isinstance(r["num_samples"], list) else [r["num_samples"]])}
    k_text = f"K = {first['num_samples']}" if len(ks) == 1 else f"K = {', '.join(map(str, sorted(ks)))} (DIFFERENT K: estimates rise with K)"
    return (f"{first['quantity'] or 'log p(x)'}, nats per test image (higher is better), {k_text} importance samples, "
            f"{first['n']} test images, ± standard error over the images; paired differences against {first['label']}, "
            f"image by image, with their 95% intervals")


def format_table(rows, fmt="text"):
    """The rows as ``text``, ``markdown``, ``latex`` or ``json``."""
    if fmt == "json":
        return json.dumps(rows)
    header, body = cells(rows)
    if fmt == "markdown":
        def line(values):
            return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"
        return "\n".join([line(header), "|" + " --- |" * len(header), *map(line, body)])
    if fmt == "latex":
        def line(values):
            return " & ".join(latex_escape(v) for v in values) + r" \\"
        return "\n".join([r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\hline", line(header), r"\hline",
                          *map(line, body), r"\hline", r"\end{tabular}"])
    if fmt == "text":
        widths = [max(len(v) for v in column) for column in zip(header, *body)]
        def line(values):
            return "  ".join(v.ljust(w) if j == 0 else v.rjust(w) for j, (v, w) in enumerate(zip(values, widths)))
        return "\n".join([caption(rows), line(header), *map(line, body)])
    raise UserError(f"--format must be text, markdown, latex or json, got {fmt!r}")


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "|": r"$|$", ">": r"$>$", "<": r"$<$", "±": r"$\pm$"}
NUMBERS = re.compile(r"[-+\d.,%\[\] ±]*\d[-+\d.,%\[\] ±]*")


def latex_escape(text):
    """A cell in LaTeX: numbers in math mode (a true minus sign), TeX's special characters escaped."""
    numbers, marked = (text[: -len(" includes 0")], " includes 0") if text.endswith(" includes 0") else (text, "")
    if NUMBERS.fullmatch(numbers):
        return "$" + numbers.replace("±", r"\pm").replace("%", r"\%") + "$" + marked
    return "".join(LATEX_SPECIAL.get(c, c) for c in text)


def plot(rows, path):
    """A forest plot of the paired differences against the baseline, one line per row."""
    from . import plots  # matplotlib: only where the figure is drawn

    others = [r for r in rows if not r["baseline"] and r["diff_ci_low"] is not None]
    if not others:
        raise UserError("--plot needs at least two rows to compare (runs, or groups of seeds, with at least two test images)")
    plots.forest_plot(path, [r["label"] for r in others], [r["diff"] for r in others], [r["diff_ci_low"] for r in others],
                      [r["diff_ci_high"] for r in others], f"{rows[0]['quantity'] or 'log p(x)'} minus the baseline's ({rows[0]['label']}), "
                      f"nats per test image, paired over {rows[0]['n']} images; 95% intervals")
