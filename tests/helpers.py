"""What several test modules share besides fixtures: the small, fast configuration."""

import os
import signal
import sys
from pathlib import Path

import torch

from pyro_vae import config, register_likelihood
from pyro_vae.likelihoods import Bernoulli

REPO = Path(__file__).resolve().parents[1]


def mnist_dir():
    return os.environ.get("PYRO_VAE_DATA") or str(REPO.parent / "shared" / "data")


def snapshot(root, skip=None):
    """Every file's bytes (and every folder) under ``root``, but ``skip`` and what lies under it:
    what a test compares before and after a command that must change nothing else."""
    return {p.relative_to(root): p.read_bytes() if p.is_file() else "folder"
            for p in sorted(root.rglob("*")) if skip is None or (p != skip and skip not in p.parents)}


def random_weights(vae, std):
    """``vae`` with every parameter drawn from N(0, std^2): the encoder's extra outputs and the
    flows' last layers start at zero, which would leave what a test compares vacuous."""
    with torch.no_grad():
        for p in vae.parameters():
            p.normal_(0, std)
    return vae


def assert_same_weights(expected, actual):
    """Every tensor of ``expected``'s state_dict equals ``actual``'s bitwise (a resumed run's
    weights against the straight run's)."""
    got = actual.state_dict()
    for name, tensor in expected.state_dict().items():
        assert torch.equal(tensor, got[name]), name


def small_config(data_dir, *overrides):
    """A config that trains in seconds: 2000 MNIST training images, 500 test images, small nets."""
    base = [
        f"data.dir={data_dir!r}".replace("'", '"'),
        "data.limit=2000",
        "data.test_limit=500",
        "model.latent_dim=8",
        "model.encoder.hidden=[64]",
        "model.decoder.hidden=[64]",
        "train.epochs=2",
        "train.device=cpu",
        # compiling costs seconds per run; tests/test_step.py covers the compiled step and compiled runs
        "train.compile=off",
    ]
    return config.load(None, base + list(overrides))


KILL_AT = "PYRO_VAE_TEST_KILL_AT"


@register_likelihood("kill_at")
class KillAt(Bernoulli):
    """A Bernoulli likelihood that SIGKILLs its own process on training call ``$PYRO_VAE_TEST_KILL_AT``
    (counted from 1 in each process; evaluation calls do not count): a kill at a known step, where
    a timer would race the training it tries to interrupt. Without the variable it is Bernoulli."""

    def __init__(self, input_dim):
        super().__init__(input_dim)
        self.kill_at, self.count = int(os.environ.get(KILL_AT, "0")), 0

    def forward(self, out):
        if self.training and self.kill_at:
            self.count += 1
            if self.count == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(out)


def cli_command(*argv):
    """``pyro-vae *argv`` in a new Python process that knows this module's likelihoods."""
    script = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import helpers; from pyro_vae.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", script, *argv]


def record_grids(monkeypatch):
    """Replace ``plots.image_grid`` with a recorder that still writes the figure: a list that gets,
    per grid drawn, its file name, number of images, images per row and row labels (a labelled
    figure's pixel size no longer says how many images it holds)."""
    from pyro_vae import plots

    drawn, draw = [], plots.image_grid

    def recording(path, images, image_shape, nrow=8, **labels):
        drawn.append({"name": Path(path).name, "n": len(images), "nrow": nrow, "row_labels": labels.get("row_labels")})
        draw(path, images, image_shape, nrow, **labels)

    monkeypatch.setattr(plots, "image_grid", recording)
    return drawn


def readable_png(path, min_width=450):
    """The file is a PNG a person can read on a screen: it opens, and it is not a thumbnail."""
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.format == "PNG" and image.size[0] >= min_width
