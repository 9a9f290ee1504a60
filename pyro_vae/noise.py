"""All of training's randomness as a function of (seed, epoch) and (seed, step) alone.

An epoch's shuffle comes from a generator seeded by the epoch; each step draws its random numbers
for the *global* batch from a generator seeded by the step, in a fixed order: first the uniforms
of dynamic binarization, then the standard-normal noise of the guide's reparameterized sample
z = loc + scale * eps. A process then keeps the rows of its own shard. So one process, or N
processes each holding 1/N of the batch, see exactly the same numbers, and a resumed run
continues exactly where it stopped, with no generator state to carry.
"""

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger


def seeded(seed, stream, device="cpu"):
    """The generator of random stream ``stream`` of a run seeded ``seed``."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + stream)


def epoch_order(n, seed, epoch, device):
    """The shuffle of epoch ``epoch``, the same in every process and after a restart."""
    return torch.randperm(n, generator=seeded(seed, epoch)).to(device)


class StepNoise(Messenger):
    """The random numbers of one training step, for this process's ``rows`` of a global batch
    of ``global_size``: :meth:`binarize` draws the pixels, and, as a Pyro messenger, it supplies
    the guide's latent samples.

    The data plate is the rightmost batch dimension of every latent site (the model's contract);
    vectorized particles sit to its left and are drawn in full. Only Normal sites (the VAE's
    guide) take noise from here.
    """

    def __init__(self, seed, step, global_size, rows, device):
        super().__init__()
        self.generator = seeded(seed, step + 1, device)
        self.global_size, self.rows = global_size, rows

    def binarize(self, x):
        """Dynamic binarization of this process's grey pixels ``x``: one Bernoulli draw each."""
        u = torch.rand(self.global_size, x.shape[1], generator=self.generator, device=x.device)
        return (u[self.rows] < x).to(x.dtype)

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None:
            return
        fn = msg["fn"]
        base = fn.base_dist if isinstance(fn, dist.Independent) else fn
        if not isinstance(base, dist.Normal):  # plates' subsample sites; non-Normal sites sample as usual
            return
        shape = fn.shape()
        data_dim = len(shape) - fn.event_dim - 1
        global_shape = shape[:data_dim] + (self.global_size,) + shape[data_dim + 1 :]
        eps = torch.randn(global_shape, generator=self.generator, device=base.loc.device, dtype=base.loc.dtype)
        msg["value"] = base.loc + base.scale * eps[(slice(None),) * data_dim + (self.rows,)]
