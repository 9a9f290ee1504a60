"""Generated bad (and good) input through the public entry points: config values for every key,
``--set`` strings, user array files and damaged checkpoint payloads. The property, for every
example: the command succeeds, or it fails with exit status 2 and one line on stderr; and no file
changes outside the folder or file the command was asked to write.

Hypothesis runs a fixed number of examples from a fixed seed (``derandomize``), so the suite takes
the same time and finds the same examples on every run: it cannot flake.
"""

import dataclasses
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import snapshot
from pyro_vae import cli, config
from pyro_vae.errors import UserError
from pyro_vae.guides import GUIDES
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.networks import ACTIVATIONS, INIT_BIASES, NETWORK_TYPES
from pyro_vae.priors import PRIORS

FIXED = settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))



def one_line_failure(status, err):
    assert status == 2, err
    assert err.startswith("pyro-vae: error: ") and err.count("\n") == 1 and "Traceback" not in err, err


# -- config values for every key -------------------------------------------------------------
def leaf_keys(cls=config.Config, prefix=""):
    keys = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys += leaf_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


# the data's location is the test's own; compiling would take seconds per example (test_step.py covers it)
KEYS = [k for k in leaf_keys() if k not in ("data.dir", "data.path", "train.compile")]
# sizes either small, or far beyond any machine, so that an accepted config trains in a blink
SIZES = st.one_of(st.integers(-2, 48), st.sampled_from([10**12, -(10**12), 2**32, 2**63 - 1]))
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e-50, 1e-3, 0.5, 1e39]))
SCALARS = st.one_of(SIZES, NUMBERS, st.booleans(), st.text(max_size=12), st.lists(SIZES, max_size=3))


def part_spec(registry):
    names = st.sampled_from([*registry.names(), "bogus"])
    params = st.dictionaries(st.sampled_from(["components", "init_std", "init_mean", "scale", "flows", "hidden", "context",
                                              "stable", "off_diagonal_scale", "bogus"]), SCALARS, max_size=2)
    return st.one_of(names, st.builds(lambda name, p: {"type": name, **p}, names, params))


PARTS = {"model.prior": part_spec(PRIORS), "model.likelihood": part_spec(LIKELIHOODS), "model.guide": part_spec(GUIDES)}


def toml_literal(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {toml_literal(v)}" for k, v in value.items()) + "}"


CHOICES = {"data.binarize": config.BINARIZATIONS, "train.objective": config.OBJECTIVES, "train.device": config.DEVICES,
           "train.nan_policy": config.NAN_POLICIES, "model.encoder.type": NETWORK_TYPES, "model.decoder.type": NETWORK_TYPES,
           "model.encoder.activation": tuple(ACTIVATIONS), "model.decoder.activation": tuple(ACTIVATIONS),
           "model.decoder.init_bias": INIT_BIASES}


def typed(key):
    """Mostly values of the key's own type (so that generation reaches past the type checks), sometimes anything."""
    if key in PARTS:
        return PARTS[key]
    if key not in KEYS:
        return SCALARS
    if key in CHOICES:
        own = st.sampled_from([*CHOICES[key], "bogus"])
    else:
        default = config.from_dict({})
        for part in key.split("."):
            default = getattr(default, part)
        own = {bool: st.booleans(), int: SIZES, float: NUMBERS, list: st.lists(SIZES, max_size=3)}.get(type(default), SCALARS)
    return st.one_of(own, own, own, SCALARS)


@st.composite
def overrides(draw):
    pairs = draw(st.lists(st.sampled_from(KEYS + ["model.bogus"]), min_size=1, max_size=3, unique=True))
    return [f"{key}={toml_literal(draw(typed(key)))}" for key in pairs]


@pytest.fixture(scope="module")
def pixels(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz_data") / "pixels.npy"
    np.save(path, (np.random.default_rng(0).random((40, 16)) > 0.5).astype(np.float32))
    return path


def tiny_train(path, out, extra):
    base = [f'data.path="{path}"', "data.binarize=none", "model.latent_dim=2", "model.encoder.hidden=[8]", "model.decoder.hidden=[8]",
            "train.batch_size=10", "train.epochs=1", "train.max_steps=4", "train.device=cpu", "train.compile=off"]
    return ["train", "--out", str(out), "--no-progress", *(arg for item in [*base, *extra] for arg in ("--set", item))]


@settings(FIXED, max_examples=60)
@given(extra=overrides())
def test_generated_config_values_train_or_fail_in_one_line(extra, pixels, tmp_path_factory, capsys):
    workspace = tmp_path_factory.mktemp("fuzz_config")
    out = workspace / "run"
    before = snapshot(pixels.parent, out)

    status = cli.main(tiny_train(pixels, out, extra))

    err = capsys.readouterr().err
    event(f"exit {status}")
    if status == 0:
        assert (out / "checkpoint.pt").is_file() and (out / "config.toml").is_file()
    else:
        one_line_failure(status, err)
        assert not out.exists()  # a refused run leaves nothing behind
    assert snapshot(pixels.parent, out) == before


@settings(FIXED, max_examples=300)
@given(item=st.one_of(st.text(max_size=40), st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.text(max_size=20))))
def test_generated_set_strings_parse_or_fail_in_one_line(item):
    try:
        config.load(None, [item])
    except UserError as e:
        assert "\n" not in str(e) and str(e)


# -- user array files ---------------------------------------------------------------------------
DTYPES = st.sampled_from(["float32", "float64", "int64", "uint8", "bool", "complex64", "U3", "object", "datetime64[s]"])


@st.composite
def array_files(draw, folder):
    """A .npy or .npz of generated arrays, sometimes damaged afterwards (truncated, bits flipped)."""
    def array(name):
        if draw(st.booleans()):  # near what the package takes: pixels (N, D) or labels (N,), so later checks are reached
            rows, width = draw(st.integers(0, 30)), draw(st.integers(1, 6))
            if name.startswith("y"):
                return np.arange(rows) % draw(st.integers(1, 4)) - draw(st.sampled_from([0, 0, 1]))
            return (np.random.default_rng(rows).random((rows, width)) > 0.5).astype(draw(st.sampled_from(["float32", "uint8", "bool"])))
        dtype = draw(DTYPES)
        shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=4)))
        values = np.random.default_rng(draw(st.integers(0, 99))).normal(size=shape) * draw(st.sampled_from([0.5, 1.0, 1e40]))
        if dtype == "object":
            return np.array(values.tolist() if values.ndim else [values.item(), "a"], dtype=object)
        with np.errstate(all="ignore"):
            return values.astype(dtype) if dtype not in ("U3", "datetime64[s]") else values.astype(int).astype(dtype)

    suffix = draw(st.sampled_from([".npy", ".npz"]))
    path = folder / f"data{suffix}"
    if suffix == ".npy":
        np.save(path, array("x"), allow_pickle=True)
    else:
        names = ["x", *draw(st.lists(st.sampled_from(["y", "x_test", "y_test", "other"]), max_size=3, unique=True))]
        np.savez(path, **{name: array(name) for name in names})
        if draw(st.booleans()):
            with zipfile.ZipFile(path, "a") as archive:
                archive.writestr(draw(st.sampled_from(["notes.txt", "z.npy"])), draw(st.binary(max_size=20)))
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: draw(st.integers(0, len(blob) - 1))])
    elif damage == "flip":
        at = draw(st.integers(0, len(blob) - 1))
        path.write_bytes(blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1 :])
    return path


@settings(FIXED, max_examples=60)
@given(data=st.data())
def test_generated_array_files_train_or_fail_in_one_line(data, tmp_path_factory, capsys):
    workspace = tmp_path_factory.mktemp("fuzz_arrays")
    path = data.draw(array_files(workspace))
    out = workspace / "run"
    before = snapshot(workspace, out)

    status = cli.main(tiny_train(path, out, []))

    err = capsys.readouterr().err
    event(f"exit {status}: {err.replace(str(workspace), '')[17:70]}")
    if status != 0:
        one_line_failure(status, err)
        assert not out.exists()
    assert snapshot(workspace, out) == before


# -- damaged checkpoint payloads ----------------------------------------------------------------
FIELD_VALUES = st.one_of(st.none(), st.integers(-5, 10**6), st.text(max_size=20), st.lists(st.integers(-1, 30), max_size=3),
                         st.builds(torch.zeros, st.integers(0, 3)), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@st.composite
def damaged_payloads(draw, payload):
    payload = dict(payload)
    how = draw(st.sampled_from(["drop", "replace", "config text", "weights", "state"]))
    if how == "drop":
        del payload[draw(st.sampled_from(sorted(payload)))]
    elif how == "replace":
        payload[draw(st.sampled_from(sorted(payload)))] = draw(FIELD_VALUES)
    elif how == "config text":
        lines = payload["config"].splitlines()
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(st.text(max_size=30)))
        if draw(st.booleans()) and lines:
            del lines[draw(st.integers(0, len(lines) - 1))]
        payload["config"] = "\n".join(lines)
    elif how == "weights":
        model = dict(payload["model"])
        name = draw(st.sampled_from(sorted(model)))
        if draw(st.booleans()):
            del model[name]
        else:
            model[name] = torch.zeros(draw(st.lists(st.integers(0, 4), max_size=3)))
        payload["model"] = model
    else:
        state = dict(payload["state"])
        state[draw(st.sampled_from(sorted(state)))] = draw(FIELD_VALUES)
        payload["state"] = state
    return payload


@settings(FIXED, max_examples=40)
@given(data=st.data(), command=st.sampled_from(["generate", "encode", "evaluate"]))
def test_damaged_checkpoint_payloads_fail_in_one_line(data, command, trained_run, tmp_path_factory, capsys):
    payload = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    workspace = tmp_path_factory.mktemp("fuzz_payload")
    run = workspace / "run"
    run.mkdir()
    torch.save(data.draw(damaged_payloads(payload)), run / "checkpoint.pt")
    target = workspace / ("x.png" if command == "generate" else "x.npz")
    args = {"generate": ["--n", "4", "--out", str(target)], "encode": ["--limit", "5", "--out", str(target)],
            "evaluate": ["--num-samples", "2", "--limit", "3"]}[command]
    before = snapshot(workspace, target)

    status = cli.main([command, str(run), *args])

    err = capsys.readouterr().err
    event(f"exit {status}")
    if status != 0:
        one_line_failure(status, err)
    changed = {p for p, v in snapshot(workspace, target).items() if before.get(p) != v}
    # evaluate writes its results into the run folder; nothing else may change
    assert changed <= ({Path("run/log_px.csv"), Path("run/diagnostics.png")} if status == 0 and command == "evaluate" else set()), changed
