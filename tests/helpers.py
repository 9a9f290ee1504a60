"""What several test modules share besides fixtures: the small, fast configuration."""

import os
import signal
import sys
from pathlib import Path

from pyro_vae import config, register_likelihood
from pyro_vae.likelihoods import Bernoulli

REPO = Path(__file__).resolve().parents[1]


def mnist_dir():
    return os.environ.get("PYRO_VAE_DATA") or str(REPO.parent / "shared" / "data")


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
