"""`pyro-vae compare` and the evaluation records it reads.

Most run folders here are constructed (config.toml, a record, metrics.csv) so the statistics are
checked against a direct computation on known per-image values in milliseconds; one test runs
`evaluate` and `compare` end to end on the session's small trained run.
"""

import json
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import readable_png
from pyro_vae import cli, config, records
from pyro_vae.compare import Z_95, compare, format_table

RNG = np.random.default_rng(0)


def make_run(root, name, log_px, elbo=None, *, seed=0, sets=(), num_samples=1000, limit=0, images="test-pixels", eval_seed=0,
             quantity="log p(x)", binary=True, input_dim=784, khat=None, epochs=(11.0, 13.0), active_units=None):
    """A run folder as `train` + `evaluate` (+ `explore`) leave it, without a checkpoint."""
    run = root / name
    run.mkdir()
    (run / "config.toml").write_text(config.load(None, [f"seed={seed}", *sets]).to_toml())
    (run / "metrics.csv").write_text("epoch,step,train_elbo,test_elbo,seconds\n" + "".join(
        f"{e + 1},{100 * (e + 1)},-110.0,{-105.0 - e},{s}\n" for e, s in enumerate(epochs)))
    add_record(run, log_px, elbo, num_samples=num_samples, limit=limit, images=images, eval_seed=eval_seed, quantity=quantity,
               binary=binary, input_dim=input_dim, khat=khat)
    if active_units is not None:
        shown = {"split": "test", "limit": 0, "count": len(log_px), "fingerprint": images, "input_dim": input_dim, "binary": binary}
        records.write(run, records.explore_name(0), records.new_record("explore", {"seed": 0}, shown, "data", {"active_units": active_units}))
    return run


def add_record(run, log_px, elbo=None, *, num_samples=1000, limit=0, images="test-pixels", eval_seed=0, quantity="log p(x)",
               binary=True, input_dim=784, khat=None):
    """What `pyro-vae evaluate` stores: per-image values (gap 5 nats, k-hat 0.5 unless given)."""
    log_px = np.asarray(log_px, dtype=float)
    elbo = log_px - 5.0 if elbo is None else np.asarray(elbo, dtype=float)
    khat = np.full(len(log_px), 0.5) if khat is None else np.asarray(khat, dtype=float)
    shown = {"split": "test", "limit": limit, "count": len(log_px), "fingerprint": images, "input_dim": input_dim, "binary": binary}
    summary = {"n": len(log_px), "num_samples": num_samples, "log_px": float(log_px.mean())}
    per_image = {"log_px": log_px.tolist(), "elbo": elbo.tolist(), "ess": [1.0] * len(log_px), "khat": khat.tolist()}
    records.write(run, records.log_px_name(num_samples, limit, eval_seed), records.new_record(
        "log_px", {"num_samples": num_samples, "limit": limit, "seed": eval_seed}, shown, "data", summary, per_image, quantity=quantity))


def per_image(n=400, mean=-98.0):
    """Images of varied difficulty (sd 15 nats), as real test sets have."""
    return mean + 15.0 * RNG.standard_normal(n)


def run_cli(capsys, *argv):
    code = cli.main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_paired_difference_and_interval_against_a_direct_computation(tmp_path):
    a = per_image()
    b = a + 0.2 + 0.5 * RNG.standard_normal(len(a))  # the same images, a little better each
    rows = compare([make_run(tmp_path, "a", a), make_run(tmp_path, "b", b, sets=["model.prior=learned_normal"])])
    d = b - a
    se = d.std(ddof=1) / math.sqrt(len(d))
    base, other = rows
    assert base["baseline"] and base["diff"] is None
    assert other["diff"] == pytest.approx(d.mean(), abs=1e-5)
    assert other["diff_stderr"] == pytest.approx(se, rel=1e-5)
    assert other["diff_ci_low"] == pytest.approx(d.mean() - 1.959964 * se, rel=1e-5)
    assert other["diff_ci_high"] == pytest.approx(d.mean() + 1.959964 * se, rel=1e-5)
    assert other["diff_ci_contains_zero"] is (other["diff_ci_low"] <= 0 <= other["diff_ci_high"])
    assert other["log_px"] == pytest.approx(b.mean(), abs=1e-5)
    assert other["log_px_stderr"] == pytest.approx(b.std(ddof=1) / math.sqrt(len(b)), rel=1e-5)
    # what pairing is for: the difference is far better determined than either run's mean
    assert other["diff_stderr"] < other["log_px_stderr"] / 5
    assert other["gap"] == pytest.approx(5.0) and other["khat_frac_above_0_7"] == 0.0
    assert (other["epochs"], other["train_seconds"], other["last_test_elbo"]) == (2, pytest.approx(24.0), -106.0)
    assert json.loads(json.dumps(rows)) == rows  # plain dicts


def test_an_interval_that_contains_zero_is_marked(tmp_path):
    a = per_image()
    b = a + 0.5 * RNG.standard_normal(len(a))
    rows = compare([make_run(tmp_path, "a", a), make_run(tmp_path, "b", b, sets=["train.lr=0.002"])])
    assert rows[1]["diff_ci_contains_zero"] is (abs(rows[1]["diff"]) <= Z_95 * rows[1]["diff_stderr"])
    text = format_table(rows, "text")
    assert ("includes 0" in text) is rows[1]["diff_ci_contains_zero"]


def test_seeds_are_grouped_and_the_paired_difference_is_seed_averaged_per_image(tmp_path):
    n = 300
    # a dynamically binarized run's test images are drawn from its seed: seed s has images "s"
    a = {s: per_image(n) for s in (0, 1, 2)}
    b = {s: a[s] + 0.3 + RNG.standard_normal(n) for s in (0, 1, 2)}
    runs = [make_run(tmp_path, f"a{s}", a[s], seed=s, images=f"pixels of seed {s}") for s in (0, 1, 2)]
    runs += [make_run(tmp_path, f"b{s}", b[s], seed=s, sets=["model.latent_dim=20"], images=f"pixels of seed {s}") for s in (2, 0, 1)]
    rows = compare(runs)
    assert len(rows) == 2 and [r["num_seeds"] for r in rows] == [3, 3]
    assert rows[1]["seeds"] == [2, 0, 1] and rows[1]["label"] == "model.latent_dim=20"
    means = [b[s].mean() for s in (0, 1, 2)]
    assert rows[1]["log_px"] == pytest.approx(np.mean(means), abs=1e-5)
    assert rows[1]["log_px_seed_spread"] == pytest.approx(np.std(means, ddof=1), rel=1e-4)
    d = np.mean([b[s] for s in (0, 1, 2)], axis=0) - np.mean([a[s] for s in (0, 1, 2)], axis=0)
    assert rows[1]["diff"] == pytest.approx(d.mean(), abs=1e-5)
    assert rows[1]["diff_stderr"] == pytest.approx(d.std(ddof=1) / math.sqrt(n), rel=1e-5)
    assert "between seeds (sd)" in format_table(rows, "text")


def test_labels_are_the_config_keys_in_which_runs_differ(tmp_path):
    x = per_image(50)
    runs = [make_run(tmp_path, "base", x), make_run(tmp_path, "vamp", x + 1, sets=['model.prior={type="vamp", components=500}']),
            make_run(tmp_path, "fast", x + 2, seed=7, sets=["train.lr=0.01"])]
    assert [r["label"] for r in compare(runs)] == ["model.prior=normal, train.lr=0.001", "model.prior=vamp(components=500), train.lr=0.001",
                                                   "model.prior=normal, train.lr=0.01"]
    # one group: nothing tells the rows apart but the folder
    same = [make_run(tmp_path, "s0", x), make_run(tmp_path, "s1", x + 1, seed=1)]
    rows = compare(same)
    assert [r["label"] for r in rows] == ["s0 (and 1 more)"] and rows[0]["diff"] is None


def test_configs_are_read_as_written_with_defaults_for_keys_they_lack(tmp_path):
    x = per_image(50)
    old = make_run(tmp_path, "old", x)  # as a version before train.nan_policy existed wrote it
    text = (old / "config.toml").read_text()
    (old / "config.toml").write_text(text.replace('nan_policy = "stop"\n', ""))
    planar = make_run(tmp_path, "planar", x + 1, seed=1)  # a family registered in the user's own module, not here
    (planar / "config.toml").write_text(text.replace('guide = "diagonal"', 'guide = { type = "planar", flows = 8 }').replace("seed = 0", "seed = 1"))
    assert 'nan_policy = "stop"' in text and 'guide = "diagonal"' in text
    rows = compare([old, make_run(tmp_path, "new", x, seed=1), planar])
    assert [(r["label"], r["num_seeds"]) for r in rows] == [("model.guide=diagonal", 2), ("model.guide=planar(flows=8)", 1)]


def test_a_named_baseline_comes_first(tmp_path):
    x = per_image(50)
    a, b = make_run(tmp_path, "a", x), make_run(tmp_path, "b", x + 1.0, sets=["train.lr=0.01"])
    rows = compare([a, b], baseline=b)
    assert rows[0]["runs"] == [str(b)] and rows[0]["baseline"]
    assert rows[1]["diff"] == pytest.approx(-1.0) and rows[1]["diff_stderr"] == pytest.approx(0.0, abs=1e-9)


def test_the_evaluation_with_the_most_images_and_largest_k_all_runs_share_is_used(tmp_path):
    x = per_image(100)
    a = make_run(tmp_path, "a", x, num_samples=5000)
    add_record(a, x + 1, num_samples=1000)
    add_record(a, x[:50] + 3, num_samples=1000, limit=50)
    b = make_run(tmp_path, "b", x + 2, num_samples=1000, sets=["train.lr=0.01"])
    add_record(b, x[:50] + 4, num_samples=1000, limit=50)
    rows = compare([a, b])
    assert [(r["num_samples"], r["n"]) for r in rows] == [(1000, 100)] * 2 and rows[0]["log_px"] == pytest.approx(x.mean() + 1)
    assert rows[1]["diff"] == pytest.approx(1.0)
    assert compare([a], num_samples=5000)[0]["log_px"] == pytest.approx(x.mean())


@pytest.mark.parametrize("case, message", [
    ("no_record", r"has no stored evaluation; make one with `pyro-vae evaluate .*b --num-samples 1000`"),
    ("other_limit", r"cover different test images .*400 images.*200 images.*same --limit"),
    ("other_pixels", r"different test images \(same number, different pixels"),
    ("other_k", r"different K .*K = 1000.*K = 5000.*--allow-different-k"),
    ("other_quantity", r"different quantities .*log p\(x \| y\)"),
    ("asked_k_missing", r"has no stored evaluation with K = 50; make one with `pyro-vae evaluate .* --num-samples 50`"),
    ("incomplete_record", r"log_px-K1000-all-seed0.json is not a pyro-vae log_px record .*delete it and run the command that wrote it"),
])
def test_comparisons_that_would_mislead_are_refused_in_one_line(tmp_path, capsys, case, message):
    x = per_image()
    a = make_run(tmp_path, "a", x)
    variant = ["train.lr=0.01"]
    if case == "no_record":
        b = make_run(tmp_path, "b", x, sets=variant)
        for path in (b / "evaluations").iterdir():
            path.unlink()
    elif case == "other_limit":
        b = make_run(tmp_path, "b", x[:200], limit=200, sets=variant)
    elif case == "other_pixels":
        b = make_run(tmp_path, "b", x, images="pixels binarized otherwise", sets=variant)
    elif case == "other_k":
        b = make_run(tmp_path, "b", x, num_samples=5000, sets=variant)
    elif case == "incomplete_record":
        b = make_run(tmp_path, "b", x, sets=variant)
        path = b / "evaluations" / "log_px-K1000-all-seed0.json"
        record = json.loads(path.read_text())
        record["per_image"]["log_px"].pop()
        path.write_text(json.dumps(record))
    elif case == "other_quantity":
        b = make_run(tmp_path, "b", x, quantity="log p(x | y)", sets=["model.conditional=true"])
    else:
        b = make_run(tmp_path, "b", x, sets=variant)
    extra = ["--num-samples", 50] if case == "asked_k_missing" else []
    code, out, err = run_cli(capsys, "compare", a, b, *extra)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_different_k_is_compared_when_asked_with_a_caveat(tmp_path, capsys):
    x = per_image()
    a, b = make_run(tmp_path, "a", x), make_run(tmp_path, "b", x + 0.5, num_samples=5000, sets=["train.lr=0.01"])
    code, out, err = run_cli(capsys, "compare", a, b, "--allow-different-k")
    assert code == 0 and "DIFFERENT K" in out and "different K" in err
    assert [r["num_samples"] for r in compare([a, b], allow_different_k=True)] == [1000, 5000]


def test_non_binary_data_get_bits_per_dimension(tmp_path):
    x = per_image(100, mean=-2000.0)
    rows = compare([make_run(tmp_path, "g", x, binary=False, input_dim=784)])
    assert rows[0]["bits_per_dim"] == pytest.approx(-x.mean() / (784 * math.log(2)), rel=1e-6)
    assert "bits/dim" in format_table(rows, "text")
    binary = compare([make_run(tmp_path, "b", per_image(100))])
    assert binary[0]["bits_per_dim"] is None and "bits/dim" not in format_table(binary, "text")


def test_active_units_come_from_a_stored_explore_record_and_are_omitted_without_one(tmp_path):
    x = per_image(100)
    with_units = compare([make_run(tmp_path, "a", x, active_units=27), make_run(tmp_path, "b", x, sets=["train.lr=0.01"], active_units=31)])
    assert [r["active_units"] for r in with_units] == [27, 31] and "active units" in format_table(with_units, "text")
    without = compare([make_run(tmp_path, "c", x), make_run(tmp_path, "d", x, sets=["train.lr=0.01"])])
    assert [r["active_units"] for r in without] == [None, None] and "active units" not in format_table(without, "text")


def grid(lines, split):
    """The cells of each line; every line of a table has the same number of them."""
    cells = [split(line) for line in lines]
    assert len({len(c) for c in cells}) == 1, cells
    return cells


def test_markdown_output_is_a_table(tmp_path, capsys):
    x = per_image()
    runs = [make_run(tmp_path, "a", x), make_run(tmp_path, "b", x + 0.3, sets=["model.guide=full_rank"])]
    code, out, _ = run_cli(capsys, "compare", *runs, "--format", "markdown")
    lines = out.strip().splitlines()
    # a GitHub-flavoured Markdown table: a header row, the delimiter row, one row per run
    assert code == 0 and len(lines) == 4 and all(line.startswith("| ") and line.endswith(" |") for line in lines)
    cells = grid(lines, lambda line: [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    assert all(re.fullmatch(r":?-{3,}:?", c) for c in cells[1])
    assert cells[0][:3] == ["run", "seeds", "log p(x)"] and cells[3][0] == "model.guide=full_rank"
    assert re.fullmatch(r"\+\d+\.\d\d ± \d+\.\d\d", cells[3][cells[0].index("vs baseline (paired)")])


def test_latex_output_is_a_tabular(tmp_path, capsys):
    x = per_image()
    runs = [make_run(tmp_path, "a", x), make_run(tmp_path, "b_c", x + 0.3, sets=["model.guide=full_rank"])]
    code, out, _ = run_cli(capsys, "compare", *runs, "--format", "latex")
    lines = out.strip().splitlines()
    spec = re.fullmatch(r"\\begin\{tabular\}\{([lcr]+)\}", lines[0])
    assert code == 0 and spec and lines[-1] == r"\end{tabular}"
    body = [line for line in lines[1:-1] if line != r"\hline"]
    assert len(body) == 3 and all(line.endswith(r" \\") for line in body)
    cells = grid(body, lambda line: [c.strip() for c in re.split(r"(?<!\\)&", line[: -len(r" \\")])])
    assert len(cells[0]) == len(spec.group(1))
    # TeX's special characters escaped: an underscore outside math mode would not compile
    assert all(re.search(r"(?<!\\)[_%#]", c) is None for row in cells for c in row)
    assert r"model.guide=full\_rank" in cells[2][0] and re.fullmatch(r"\$-\d+\.\d\d \\pm \d+\.\d\d\$", cells[2][2])
    assert all(c.count("$") % 2 == 0 for row in cells for c in row)


def test_json_output_and_forest_plot(tmp_path, capsys):
    x = per_image()
    runs = [make_run(tmp_path, "a", x), make_run(tmp_path, "b", x + 0.3, sets=["model.guide=full_rank"]),
            make_run(tmp_path, "c", x - 0.1, sets=["model.guide=iaf"])]
    code, out, err = run_cli(capsys, "compare", *runs, "--format", "json", "--plot", tmp_path / "forest.png")
    assert code == 0 and [r["label"] for r in json.loads(out)] == ["model.guide=diagonal", "model.guide=full_rank", "model.guide=iaf"]
    assert readable_png(tmp_path / "forest.png")
    code, out, err = run_cli(capsys, "compare", runs[0], "--plot", tmp_path / "one.png")
    assert code == 2 and out == "" and "--plot needs at least two rows" in err and not (tmp_path / "one.png").exists()


def test_reading_run_folders_and_comparing_import_no_training_code(tmp_path):
    x = per_image(20)
    runs = [make_run(tmp_path, "a", x), make_run(tmp_path, "b", x + 1, sets=["train.lr=0.01"])]
    training = "sorted(m for m in sys.modules if m in ('pyro_vae.run', 'pyro_vae.train', 'pyro_vae.step'))"
    script = ("import sys; import pyro_vae, pyro_vae.runfolder, pyro_vae.evaluate, pyro_vae.explore, pyro_vae.generate, pyro_vae.compare; "
              f"from pyro_vae.cli import main; assert main(['compare', *sys.argv[1:]]) == 0; print({training}); "
              # and the trainer is still there for those who ask for it
              f"from pyro_vae import train_run; print({training})")
    done = subprocess.run([sys.executable, "-c", script, *map(str, runs)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-2:] == ["[]", "['pyro_vae.run', 'pyro_vae.step', 'pyro_vae.train']"]


def test_evaluations_with_other_settings_are_kept_and_compare_reads_them(trained_run, tmp_path, capsys):
    # a copy: other tests evaluate the session's run too
    trained_run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("evaluations"))

    def evaluate(*argv):
        code, out, err = run_cli(capsys, "evaluate", trained_run, "--json", *argv)
        assert code == 0, err
        return json.loads(out.strip().splitlines()[-1])

    first = evaluate("--num-samples", 2, "--limit", 30)
    second = evaluate("--num-samples", 3, "--limit", 20, "--seed", 1)
    names = sorted(p.name for p in (trained_run / "evaluations").glob("log_px-*.json"))
    assert names == ["log_px-K2-first30-seed0.json", "log_px-K3-first20-seed1.json"]
    # log_px.csv is the latest evaluation's, as before
    assert len((trained_run / "log_px.csv").read_text().splitlines()) == 1 + 20
    record = records.read(trained_run, "log_px")[0]
    assert record["settings"] == {"num_samples": 2, "limit": 30, "seed": 0} and record["quantity"] == "log p(x)"
    assert record["images"]["count"] == 30 and record["images"]["binary"] and len(record["per_image"]["log_px"]) == 30
    assert record["summary"]["log_px"] == pytest.approx(first["log_px"]) and record["version"]
    # the same settings again: replaced, not added
    again = evaluate("--num-samples", 2, "--limit", 30)
    assert again["log_px"] == pytest.approx(first["log_px"])
    assert len(list((trained_run / "evaluations").glob("log_px-*.json"))) == 2
    rows = compare([trained_run], num_samples=3)
    assert rows[0]["n"] == 20 and rows[0]["log_px"] == pytest.approx(second["log_px"], abs=1e-5)
    assert rows[0]["epochs"] == 2 and rows[0]["elbo"] == pytest.approx(second["elbo"], abs=1e-5)
    # a test image of the first evaluation is the first image of the second: the fingerprints tell 30 from 20
    assert records.read(trained_run, "log_px")[1]["images"]["fingerprint"] != record["images"]["fingerprint"]
