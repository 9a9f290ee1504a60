"""Every user mistake ends the same way: one line on stderr saying what is wrong and how to fix
it, exit status 2, no traceback, and nothing on disk created or written over.

One table, one test. Each row builds its situation in a fresh folder and returns the command
line; the test snapshots every file under that folder, runs the CLI (in-process, or as a real
``python -m pyro_vae`` subprocess for a few rows) and checks the outcome and that the snapshot
is unchanged byte for byte (so no partial run folder and no torchvision download folders).
"""

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from helpers import snapshot
from pyro_vae import cli, config
from pyro_vae.guides import GUIDES
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.priors import PRIORS
from pyro_vae.run import train_run


class Workspace:
    """The row's folder, plus the runs a row may start from (copied in, so they can be damaged)."""

    def __init__(self, tmp, data_dir, request):
        self.tmp, self.data_dir, self.request = tmp, data_dir, request

    def path(self, name):
        return str(self.tmp / name)

    def mnist_run(self):
        """A copy of the session's small trained MNIST run."""
        return self._copy(self.request.getfixturevalue("trained_run"), "run")

    def _copy(self, src, name):
        shutil.copytree(src, self.tmp / name)
        return self.tmp / name

    def array(self, name, **arrays):
        """A user data file: ``x`` alone as .npy, anything more as .npz."""
        path = self.tmp / name
        if path.suffix == ".npy":
            np.save(path, arrays["x"])
        else:
            np.savez(path, **arrays)
        return path

    def array_run(self, features):
        """A tiny run trained on a user .npy of binary pixels; returns (run folder, data file, its overrides)."""
        data = self.array("pixels.npy", x=(np.random.default_rng(0).random((40, features)) > 0.5).astype(np.float32))
        overrides = [f'data.path="{data}"', "data.binarize=none", "model.latent_dim=2", "model.encoder.hidden=[8]",
                     "model.decoder.hidden=[8]", "train.batch_size=10", "train.epochs=1", "train.device=cpu", "train.compile=off"]
        train_run(config.load(None, overrides), self.tmp / "arun", progress=False)
        return self.tmp / "arun", data, overrides


def sets(*overrides):
    return [arg for item in overrides for arg in ("--set", item)]


def train_new(*overrides):
    """A row's setup: `pyro-vae train` into a new run folder with these --set overrides."""
    return lambda ws: ["train", "--out", ws.path("new_run"), *sets(*overrides)]


def train_on(ws, data_path, *overrides):
    """Train on a user array (a run that never gets as far as training)."""
    return train_new(f'data.path="{data_path}"', "train.device=cpu", *overrides)(ws)


def small(ws, *overrides):
    """The small MNIST config of tests/conftest.py as --set arguments."""
    return sets(f'data.dir="{ws.data_dir}"', "data.limit=2000", "data.test_limit=500", "model.latent_dim=8",
                "model.encoder.hidden=[64]", "model.decoder.hidden=[64]", "train.epochs=2", "train.device=cpu", "train.compile=off", *overrides)


def damage_checkpoint(ws, how):
    run = ws.mnist_run()
    ckpt = run / "checkpoint.pt"
    blob = ckpt.read_bytes()
    if how == "truncate":
        ckpt.write_bytes(blob[: len(blob) // 2])
    elif how == "flip":  # inside the weights: torch.load itself would not notice
        middle = len(blob) // 2
        ckpt.write_bytes(blob[:middle] + bytes(b ^ 0xFF for b in blob[middle : middle + 64]) + blob[middle + 64 :])
    elif how == "delete":
        ckpt.unlink()
    elif how == "latent_dim":  # a checkpoint whose stored config describes another model
        payload = torch.load(ckpt, weights_only=True)
        payload["config"] = payload["config"].replace("latent_dim = 8", "latent_dim = 9")
        torch.save(payload, ckpt)
    return run


def damage_payload(ws, field, value):
    """A checkpoint that passes its CRC but whose payload field ``field`` holds ``value``
    (``None`` deletes it): written by something else, or edited."""
    run = ws.mnist_run()
    ckpt = run / "checkpoint.pt"
    payload = torch.load(ckpt, weights_only=True)
    if value is None:
        del payload[field]
    else:
        payload[field] = value(payload[field]) if callable(value) else value
    torch.save(payload, ckpt)
    return run


def made(ws, name, kind):
    """An empty file or folder named ``name``, where a command expects something else."""
    path = ws.tmp / name
    path.mkdir() if kind == "folder" else path.write_bytes(b"")
    return path


def config_file(ws, name, content):
    """A --config file holding ``content`` (bytes), or a named pipe / folder for the kinds ``fifo`` / ``dir``."""
    if content == "fifo":
        os.mkfifo(ws.tmp / name)
    elif content == "dir":
        made(ws, name, "folder")
    else:
        (ws.tmp / name).write_bytes(content)
    return ["train", "--config", ws.path(name), "--out", ws.path("new_run")]


def npz_bytes(ws, name, damage):
    """A user .npz whose bytes ``damage`` rewrites (truncation, flipped bits in an array)."""
    path = ws.array(name, x=GREY)
    path.write_bytes(damage(path.read_bytes()))
    return path


def zip_with(ws, name, member, data):
    path = ws.tmp / name
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, data)
    return path


def flip_inside_array(blob):
    middle = blob.index(b"\x00\x00\x00?")  # the float32 0.5 pixels of GREY
    return blob[:middle] + b"\xff\xff\xff\xff" + blob[middle + 4 :]


def bad_toml(ws):
    path = ws.tmp / "bad.toml"
    path.write_text("seed = 1\n[model]\nlatent_dim = = 3\n")
    return ["train", "--config", str(path), "--out", ws.path("new_run")]


def resume_other_data(ws):
    run, data, overrides = ws.array_run(features=16)
    np.save(data, np.zeros((40, 25), dtype=np.float32))
    return ["train", "--out", str(run), "--resume", *sets(*overrides)]


def evaluate_other_data(ws):
    run, data, _ = ws.array_run(features=16)
    np.save(data, np.zeros((40, 25), dtype=np.float32))
    return ["evaluate", str(run), "--num-samples", "2"]


def changed_data(ws, command):
    """The run's data file rewritten with other pixels of the same shape, then ``command`` on the run."""
    run, data, overrides = ws.array_run(features=16)
    np.save(data, 1 - np.load(data))
    if command == "evaluate":
        return ["evaluate", str(run), "--num-samples", "2"]
    # the same config but for the data's location, which the run supplies
    return ["train", "--out", str(run), "--resume", *sets(*(o for o in overrides if not o.startswith("data.path")))]


def mnist_missing(ws):
    """data.dir names an empty folder: fail at once (no download attempt, no folders made in it)."""
    (ws.tmp / "empty").mkdir()
    return train_new(f'data.dir="{ws.path("empty")}"')(ws)


def killed_in_first_epoch(ws):
    """What a kill during epoch 1 leaves: the resolved config and no checkpoint yet."""
    run = ws.mnist_run()
    for path in run.iterdir():
        if path.name != "config.toml":  # the shared run may hold evaluations/, which another module's explore wrote
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return ["train", "--out", str(run), "--resume", *small(ws)]


@dataclass
class Row:
    id: str
    setup: object  # Workspace -> argv
    expected: tuple  # substrings of the one stderr line: what is wrong, and the fix
    subprocess: bool = False


GREY = np.full((10, 4), 0.5, dtype=np.float32)
def unevaluated(run):
    """The run without the evaluations other tests may have stored in the session's run."""
    shutil.rmtree(run / "evaluations", ignore_errors=True)
    return run


def damaged_record(ws):
    run = unevaluated(ws.mnist_run())
    (run / "evaluations").mkdir()
    (run / "evaluations" / "log_px-K2-all-seed0.json").write_text('{"format": 1, "kind": "log_px", "per_im')
    return ["compare", str(run)]


ROWS = [
    Row("unknown prior", train_new("model.prior=flat"),
        ("unknown prior 'flat' for model.prior", f"valid names: {', '.join(PRIORS.names())}"), subprocess=True),
    Row("unknown likelihood", train_new("model.likelihood=poisson"),
        ("unknown likelihood 'poisson' for model.likelihood", f"valid names: {', '.join(LIKELIHOODS.names())}")),
    Row("unknown guide family", train_new("model.guide=planar"),
        ("unknown guide family 'planar' for model.guide", f"valid names: {', '.join(GUIDES.names())}")),
    Row("unknown guide parameter", train_new('model.guide={type="iaf", layers=2}'),
        ("unknown parameter 'layers' for guide family 'iaf' in model.guide", "valid parameters: flows, hidden, context, stable")),
    Row("iaf layers narrower than the latent space", train_new('model.guide={type="iaf", hidden=[32]}', "model.latent_dim=50"),
        ("every iaf hidden layer must be at least latent_dim = 50 wide", "got hidden = [32]")),
    Row("full_rank with a zero off-diagonal scale", train_new('model.guide={type="full_rank", off_diagonal_scale=0}'),
        ("full_rank's off_diagonal_scale must be a positive number, got 0",)),
    Row("iaf hidden not a list", train_new('model.guide={type="iaf", hidden=320}'),
        ("parameter 'hidden' of guide family 'iaf' in model.guide must be a list of whole numbers, got 320",)),
    Row("iaf stable not a boolean", train_new('model.guide={type="iaf", stable="yes"}'),
        ("parameter 'stable' of guide family 'iaf' in model.guide must be true or false, got 'yes'",)),
    Row("mixture components not a number", train_new('model.prior={type="mixture", components="ten"}'),
        ("parameter 'components' of prior 'mixture' in model.prior must be a whole number, got 'ten'",)),
    Row("mixture with no components", train_new('model.prior={type="mixture", components=0}'),
        ("mixture's components must be at least 1, got 0",)),
    Row("vamp with no pseudo-inputs", train_new('model.prior={type="vamp", components=0}'),
        ("vamp's components must be at least 1, got 0",)),
    Row("mixture means started alike", train_new('model.prior={type="mixture", init_std=0.0}'),
        ("mixture's init_std must be a positive number", "got 0.0")),
    Row("gaussian likelihood with a negative scale", train_new('model.likelihood={type="gaussian", scale=-1.0}'),
        ("likelihood 'gaussian': scale must be a positive number or \"learned\", got -1.0",)),
    Row("iaf in one dimension", train_new("model.guide=iaf", "model.latent_dim=1"),
        ("an iaf needs model.latent_dim of at least 2", 'use model.guide = "diagonal"')),
    Row("iaf with no flows", train_new("model.guide.type=iaf", "model.guide.flows=0"),
        ("an iaf needs flows of at least 1, got 0",)),
    Row("unknown objective", train_new("train.objective=vimco"),
        ("train.objective = 'vimco' is not valid", f"choose one of: {', '.join(config.OBJECTIVES)}")),
    Row("unknown config key", train_new("model.latnt_dim=3"),
        ("unknown config key 'model.latnt_dim'", "valid keys:", "model.latent_dim")),
    Row("negative latent size", train_new("model.latent_dim=-1"),
        ("model.latent_dim must be at least 1, got -1",)),
    Row("zero batch size", train_new("train.batch_size=0"),
        ("train.batch_size must be at least 1, got 0",)),
    Row("zero importance samples", lambda ws: ["evaluate", str(ws.mnist_run()), "--num-samples", "0"],
        ("--num-samples must be at least 1, got 0",)),
    Row("TOML syntax error", bad_toml, ("bad.toml is not valid TOML", "line 3")),
    Row("strings as data", lambda ws: train_on(ws, ws.array("s.npy", x=np.array([["a", "b"]] * 10))),
        ("'x' must be a numeric array of shape (N, D) or (N, H, W)", "<U1 (10, 2)")),
    Row("4-D data", lambda ws: train_on(ws, ws.array("d4.npy", x=np.zeros((10, 2, 2, 2)))),
        ("'x' must be a numeric array of shape (N, D) or (N, H, W)", "(10, 2, 2, 2)")),
    Row("conv nets on non-square data", lambda ws: train_on(ws, ws.array("d10.npy", x=np.zeros((10, 10))), "model.encoder.type=conv"),
        ("conv networks need square images", "10 pixels per datum", 'model.encoder.type = "mlp"')),
    Row("resume on data of another width", resume_other_data,
        ("was trained on data of 16 features per datum", "now have 25", "resume with the data it was trained on")),
    Row("evaluate on data of another width", evaluate_other_data,  # the fingerprint, checked first, names the cause
        ("are not the data", "was trained on (their fingerprint differs)", "restore the original files")),
    Row("evaluate on data that changed", lambda ws: changed_data(ws, "evaluate"),
        ("are not the data", "was trained on (their fingerprint differs)", "restore the original files")),
    Row("resume on data that changed", lambda ws: changed_data(ws, "resume"),
        ("are not the data", "was trained on (their fingerprint differs)", "restore the original files")),
    Row("NaN in the data", lambda ws: train_on(ws, ws.array("nan.npy", x=np.where(np.eye(10, 4) > 0, np.nan, 0.0))),
        ("'x' contains NaN or inf values", "clean or drop those rows")),
    Row("inf in the test data", lambda ws: train_on(ws, ws.array("inf.npz", x=GREY, x_test=np.full((5, 4), np.inf))),
        ("'x_test' contains NaN or inf values", "clean or drop those rows")),
    Row("pixels outside [0, 1] with binarization", lambda ws: train_on(ws, ws.array("big.npy", x=GREY * 4)),
        ('data.binarize = "dynamic" needs pixels in [0, 1]', 'set data.binarize = "none"')),
    Row("grey pixels for bernoulli without binarization", lambda ws: train_on(ws, ws.array("grey.npy", x=GREY), "data.binarize=none"),
        ("likelihood 'bernoulli' needs binary pixels", 'set data.binarize = "dynamic" or "static"')),
    Row("negative labels", lambda ws: train_on(ws, ws.array("neg.npz", x=GREY, y=np.arange(10) - 1), "model.conditional=true"),
        ("'y' has negative labels", "labels must be 0..num_classes-1")),
    Row("test labels out of range",
        lambda ws: train_on(ws, ws.array("range.npz", x=GREY, y=np.arange(10) % 3, x_test=GREY[:4], y_test=np.array([0, 1, 2, 7])),
                            "model.conditional=true"),
        ("labels must lie in 0..2", "got values from 0 to 7")),
    Row("missing labels for a conditional model", lambda ws: train_on(ws, ws.array("nolabels.npy", x=GREY), "model.conditional=true"),
        ("model.conditional = true needs labels", "give 'y' in the data file")),
    Row("more labelled images than training images", lambda ws: ["train", "--out", ws.path("new_run"), *small(ws, "model.conditional=true", "data.labelled=2001")],
        ("data.labelled = 2001 asks for more labelled images than the 2000 training images", "choose at most 2000")),
    Row("fewer labels than classes", lambda ws: ["train", "--out", ws.path("new_run"), *small(ws, "model.conditional=true", "data.labelled=9")],
        ("data.labelled = 9 is fewer than one label per class (10 classes)", "choose at least 10")),
    Row("semi-supervised on data without labels",
        lambda ws: train_on(ws, ws.array("unlabelled.npy", x=GREY), "model.conditional=true", "data.labelled=4"),
        ("data.labelled = 4 keeps some labels, but the data have none", "set data.labelled = 0")),
    Row("semi-supervised without a conditional model", train_new("data.labelled=100"),
        ("data.labelled = 100 trains the semi-supervised conditional model", "set model.conditional = true")),
    Row("semi-supervised with iwae", train_new("model.conditional=true", "data.labelled=100", "train.objective=iwae"),
        ("train.objective = 'iwae' cannot sum out the unknown labels", "choose one of: elbo, mean_field")),
    Row("semi-supervised compiled", train_new("model.conditional=true", "data.labelled=100", "train.compile=on"),
        ("train.compile = on cannot compile a semi-supervised run", "use train.compile = auto or off")),
    Row("negative supervised weight", train_new("model.conditional=true", "data.labelled=100", "train.supervised_weight=-1"),
        ("train.supervised_weight must be a finite number of at least 0, got -1.0",)),
    Row("unknown classifier network", train_new("model.conditional=true", "data.labelled=100", "model.classifier.type=rnn"),
        ("model.classifier.type = 'rnn' is not valid", "choose one of: mlp, conv")),
    Row("features and a data file", train_new('data.features="m1"', 'data.path="x.npz"', "data.binarize=none", "model.likelihood=gaussian"),
        ("data.features and data.path both name the data", "leave data.path out")),
    Row("features binarized", train_new('data.features="m1"', "model.likelihood=gaussian"),
        ("data.features gives real-valued codes, which data.binarize = 'dynamic' cannot binarize", 'set data.binarize = "none"')),
    Row("features under a Bernoulli likelihood", train_new('data.features="m1"', "data.binarize=none"),
        ("data.features gives real-valued codes, which likelihood 'bernoulli' cannot model", 'use model.likelihood = "gaussian"')),
    Row("features from a folder with no run", lambda ws: train_new(f'data.features="{ws.path("nowhere")}"', "data.binarize=none", "model.likelihood=gaussian")(ws),
        ("data.features = ", "no checkpoint at", "train first with `pyro-vae train --out")),
    Row("features from a conditional run",
        lambda ws: train_new(f'data.features="{ws._copy(ws.request.getfixturevalue("trained_cvae_run"), "cvae")}"', "data.binarize=none", "model.likelihood=gaussian")(ws),
        ("is a conditional run: its encoder needs the label", "train the feature run unconditionally")),
    Row("MNIST missing offline", mnist_missing,
        ("MNIST is not under", "empty/MNIST/raw", "put the four files train-images-idx3-ubyte"), subprocess=True),
    Row("missing checkpoint", lambda ws: ["evaluate", str(damage_checkpoint(ws, "delete")), "--num-samples", "2"],
        ("no checkpoint at", "train first with `pyro-vae train --out")),
    Row("encode a folder without a checkpoint", lambda ws: ["encode", str(damage_checkpoint(ws, "delete")), "--out", ws.path("codes.npz")],
        ("no checkpoint at", "train first with `pyro-vae train --out")),
    Row("explore a folder without a checkpoint", lambda ws: ["explore", str(damage_checkpoint(ws, "delete")), "--out", ws.path("figures")],
        ("no checkpoint at", "train first with `pyro-vae train --out")),
    Row("encode an unknown split", lambda ws: ["encode", str(ws.mnist_run()), "--split", "valid", "--out", ws.path("codes.npz")],
        ("argument --split: invalid choice: 'valid'", "see `pyro-vae encode --help`")),
    Row("encode --limit 0", lambda ws: ["encode", str(ws.mnist_run()), "--limit", "0", "--out", ws.path("codes.npz")],
        ("--limit must be a positive number of images, got 0",)),
    Row("encode to a file that is not .npz", lambda ws: ["encode", str(ws.mnist_run()), "--out", ws.path("codes.csv")],
        ("--out must end in .npz",)),
    Row("resume without a run", lambda ws: ["train", "--out", ws.path("new_run"), "--resume", *small(ws)],
        ("no checkpoint at", "new_run/checkpoint.pt", "train first")),
    Row("resume a run killed before its first checkpoint", killed_in_first_epoch,
        ("has no checkpoint.pt (the run stopped before its first epoch ended)", "start it again with --overwrite")),
    Row("truncated checkpoint", lambda ws: ["generate", str(damage_checkpoint(ws, "truncate")), "--out", ws.path("x.png")],
        ("is truncated or corrupted", "restore it from a copy"), subprocess=True),
    Row("truncated checkpoint on resume", lambda ws: ["train", "--out", str(damage_checkpoint(ws, "truncate")), "--resume", *small(ws)],
        ("is truncated or corrupted", "restore it from a copy")),
    Row("corrupted checkpoint", lambda ws: ["evaluate", str(damage_checkpoint(ws, "flip")), "--num-samples", "2"],
        ("is truncated or corrupted", "fails its CRC-32 check", "restore it from a copy")),
    Row("checkpoint config does not match its weights", lambda ws: ["generate", str(damage_checkpoint(ws, "latent_dim")), "--out", ws.path("x.npz")],
        ("does not match the model its config describes", "size mismatch", "use the config.toml it was trained with")),
    Row("compare a folder that is not a run", lambda ws: ["compare", ws.path("")],
        ("is not a run folder (no config.toml)", "written by `pyro-vae train --out`")),
    Row("compare a run never evaluated", lambda ws: ["compare", str(unevaluated(ws.mnist_run()))],
        ("has no stored evaluation", "make one with `pyro-vae evaluate", "--num-samples 1000`")),
    Row("compare with a damaged record", damaged_record,
        ("is not an evaluation record (not valid JSON)", "delete it and run the command that wrote it again")),
    Row("compare --plot to a file that is not .png", lambda ws: ["compare", str(ws.mnist_run()), "--plot", ws.path("forest.pdf")],
        ("--plot must name a .png file in an existing folder",)),
    Row("run folder holds another run", lambda ws: ["train", "--out", str(ws.mnist_run()), *small(ws, "seed=1")],
        ("already holds a run", "add --resume to continue it, --overwrite to replace it")),
    Row("resume with another config", lambda ws: ["train", "--out", str(ws.mnist_run()), "--resume", *small(ws, "model.latent_dim=9")],
        ("the config differs", "only train.epochs, train.max_steps, train.compile, train.tensorboard and train.mlflow may change")),
    # sizes no machine holds: refused before anything is allocated, naming the key to lower
    *(Row(f"{key} beyond any machine", train_new(override), ("of memory", "more than the", f"lower {key}"))
      for key, override in [("model.latent_dim", "model.latent_dim=1000000000000"),
                            ("model.decoder.hidden", "model.decoder.hidden=[100000000000]"),
                            ("model.encoder.hidden", "model.encoder.hidden=[100000000000, 10]"),
                            ("model.prior.components", 'model.prior={type="mixture", components=1000000000000}'),
                            ("model.prior.components", 'model.prior={type="vamp", components=1000000000000}'),
                            ("model.guide.hidden", 'model.guide={type="iaf", hidden=[1000000000000]}'),
                            ("model.guide.flows", 'model.guide={type="iaf", flows=1000000000000}'),
                            ("train.num_particles", "train.num_particles=1000000000000")]),
    Row("generate --n beyond any machine", lambda ws: ["generate", str(ws.mnist_run()), "--n", "1000000000000", "--out", ws.path("x.png")],
        ("--n asks for 1,000,000,000,000 images", "lower --n")),
    Row("evaluate --num-samples beyond any machine", lambda ws: ["evaluate", str(ws.mnist_run()), "--num-samples", "1000000000000000"],
        ("--num-samples asks for", "lower --num-samples")),
    # seeds, where they enter
    Row("negative seed", train_new("seed=-1"), ("seed must lie in 0..4294967295, got -1",)),
    Row("seed past 2^32", train_new("seed=4294967296"), ("seed must lie in 0..4294967295",)),
    *(Row(f"{command} --seed -1", lambda ws, command=command, extra=extra: [command, str(ws.mnist_run()), "--seed", "-1", *extra(ws)],
          ("--seed must lie in 0..4294967295, got -1",))
      for command, extra in [("generate", lambda ws: ["--out", ws.path("x.png")]), ("evaluate", lambda ws: []),
                             ("explore", lambda ws: ["--out", ws.path("figures")])]),
    # numbers that pass a type check but make nonsense
    Row("infinite learning rate", train_new("train.lr=inf"), ("train.lr must be a finite positive number, got inf",)),
    Row("NaN learning rate", train_new("train.lr=nan"), ("train.lr must be a finite positive number, got nan",)),
    Row("learning rate that is 0 in float32", train_new("train.lr=1e-50"), ("train.lr = 1e-50 is 0 in float32",)),
    Row("NaN learning-rate decay", train_new("train.lr_decay=nan"), ("train.lr_decay must be a finite positive number and at most 1.0",)),
    Row("gaussian scale that is 0 in float32", train_new('model.likelihood={type="gaussian", scale=1e-50}'),
        ("parameter 'scale' of likelihood 'gaussian' in model.likelihood must be a number float32 can hold",)),
    Row("infinite mixture spread", train_new('model.prior={type="mixture", init_std=inf}'),
        ("parameter 'init_std' of prior 'mixture' in model.prior must be a finite number, got inf",)),
    Row("NaN VampPrior init_mean", train_new('model.prior={type="vamp", init_mean=nan}'),
        ("parameter 'init_mean' of prior 'vamp' in model.prior must be a finite number, got nan",)),
    # files given where a file is expected
    Row("config in Latin-1", lambda ws: config_file(ws, "latin.toml", "# caf\xe9\nseed = 1\n".encode("latin-1")),
        ("latin.toml is not UTF-8 text (byte 0xe9 at offset 5)", "save it as UTF-8")),
    Row("config in UTF-16", lambda ws: config_file(ws, "utf16.toml", "seed = 1\n".encode("utf-16")), ("is not UTF-8 text",)),
    Row("config that is binary", lambda ws: config_file(ws, "binary.toml", bytes(range(256))), ("is not UTF-8 text",)),
    Row("config that is a named pipe", lambda ws: config_file(ws, "pipe.toml", "fifo"), ("pipe.toml is not a regular file", "give --config a file")),
    Row("config that is a folder", lambda ws: config_file(ws, "folder.toml", "dir"), ("folder.toml is a folder", "give --config a file")),
    Row("data with an object array", lambda ws: train_on(ws, ws.array("objects.npz", x=np.array([1, "a", None], dtype=object))),
        ("cannot read", "objects.npz as a .npy/.npz array file", "Object arrays cannot be loaded")),
    Row("empty .npy", lambda ws: train_on(ws, made(ws, "empty.npy", "file")),
        ("empty.npy as a .npy/.npz array file",)),
    Row("truncated .npy", lambda ws: train_on(ws, npz_bytes(ws, "cut.npy", lambda b: b[:100])), ("cut.npy as a .npy/.npz array file",)),
    Row("truncated .npz", lambda ws: train_on(ws, npz_bytes(ws, "cut.npz", lambda b: b[: len(b) // 2])), ("cut.npz as a .npy/.npz array file",)),
    Row("data failing its CRC", lambda ws: train_on(ws, npz_bytes(ws, "flipped.npz", flip_inside_array)), ("Bad CRC-32",)),
    Row("zip member that is not an array", lambda ws: train_on(ws, zip_with(ws, "text.npz", "x.txt", "hello")),
        ("member 'x.txt' is not a NumPy array",)),
    Row("zip member named .npy that is not one", lambda ws: train_on(ws, zip_with(ws, "fake.npz", "x.npy", "hello")),
        ("fake.npz", "is not a NumPy array")),
    Row("data.path that is a folder", lambda ws: train_on(ws, made(ws, "folder.npy", "folder")),
        ("folder.npy is a folder", "give data.path a file")),
    # checkpoints that pass their CRC but whose payload is damaged: the same line for every command
    *(Row(f"checkpoint whose {what} ({command})", lambda ws, field=field, value=value, command=command, args=args: [command, str(damage_payload(ws, field, value)), *args(ws)],
          ("is damaged", expected, "restore it from a copy"))
      for what, field, value, expected in [("config is not TOML", "config", "latent_dim = = 3", "its config is not valid TOML"),
                                           ("config is not text", "config", torch.zeros(2), "field 'config' holds Tensor"),
                                           ("config has an unknown key", "config", lambda text: text + "\nbogus = 1\n", "unknown config key 'train.bogus'"),
                                           ("input_dim is a string", "input_dim", "784", "field 'input_dim' holds str"),
                                           ("image_shape does not fit input_dim", "image_shape", [3, 3], "does not hold its input_dim"),
                                           ("weights are not tensors", "model", {"encoder": 1}, "field 'model' holds dict")]
      for command, args in [("generate", lambda ws: ["--out", ws.path("x.png")]), ("evaluate", lambda ws: ["--num-samples", "2"]),
                            ("encode", lambda ws: ["--out", ws.path("x.npz")]), ("explore", lambda ws: ["--out", ws.path("figures")])]),
    Row("checkpoint with a missing field", lambda ws: ["generate", str(damage_payload(ws, "model", None)), "--out", ws.path("x.png")],
        ("is not a pyro-vae checkpoint",)),
    Row("resume a checkpoint whose state is damaged", lambda ws: ["train", "--out", str(damage_payload(ws, "state", {"epoch": "one"})), "--resume", *small(ws)],
        ("is damaged", "field 'state' holds dict")),
    # outputs, and what the user typed
    Row("generate into a folder", lambda ws: ["generate", str(ws.mnist_run()), "--out", str(made(ws, "out.png", "folder"))],
        ("out.png is a folder; give a file name to write",)),
    Row("encode into a folder", lambda ws: ["encode", str(ws.mnist_run()), "--out", str(made(ws, "out.npz", "folder"))],
        ("out.npz is a folder; give a file name to write",)),
    Row("newline in a --set key", train_new("model.latnt\n_dim=3"), ("unknown config key 'model.latnt\\n_dim'",)),
    Row("newline in a --set value", train_new("train.objective=elbo\nrm -rf"), ("train.objective = 'elbo\\nrm -rf' is not valid",)),
    Row("newline in a --config path", lambda ws: ["train", "--config", ws.path("a\nb.toml"), "--out", ws.path("new_run")],
        ("a\\nb.toml does not exist",)),
    Row("--out inside a file", lambda ws: ["train", "--out", str(made(ws, "notes.txt", "file") / "run"), *small(ws)],
        ("notes.txt/run lies inside a file, not a folder",)),
    Row("empty --out", lambda ws: ["train", "--out", "", *small(ws)], ("--out is empty",)),
]



def run_cli(argv, in_subprocess, cwd, capsys):
    """(exit status, stdout, stderr) of ``pyro-vae argv``."""
    if in_subprocess:
        done = subprocess.run([sys.executable, "-m", "pyro_vae", *argv], cwd=cwd, capture_output=True, text=True, timeout=300)
        return done.returncode, done.stdout, done.stderr
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(row, tmp_path, data_dir, request, capsys, recwarn):
    argv = row.setup(Workspace(tmp_path, data_dir, request))
    capsys.readouterr()  # whatever setting the row up printed
    recwarn.clear()
    before = snapshot(tmp_path)

    status, out, err = run_cli(argv, row.subprocess, tmp_path, capsys)

    assert status == 2, err
    assert "Traceback" not in err
    assert err.startswith("pyro-vae: error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    for words in row.expected:
        assert words in err
    assert out == ""
    assert [str(w.message) for w in recwarn] == []  # in-process, a warning would be more lines on stderr
    assert snapshot(tmp_path) == before
