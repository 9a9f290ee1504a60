"""Training randomness as a function of (seed, step) alone.

Each step draws its random numbers for the *global* batch from a generator seeded by the step:
the uniforms of dynamic binarization and the standard-normal noise of the guide's
reparameterized sample z = loc + scale * eps. A process then keeps the rows of its own shard.
So one process, or N processes each holding 1/N of the batch, see exactly the same numbers, and
a resumed run continues exactly where it stopped, with no generator state to carry.
"""

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger


def step_generator(seed, step, device):
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step + 1)


def latent_noise_site(msg):
    """The Normal base of a latent site whose value the noise supplies, else ``None`` (observed
    or already-valued sites, plates' subsample sites, and non-Normal sites sample as usual)."""
    if msg["is_observed"] or msg["value"] is not None:
        return None
    fn = msg["fn"]
    base = fn.base_dist if isinstance(fn, dist.Independent) else fn
    return base if isinstance(base, dist.Normal) else None


class ShardNoise(Messenger):
    """Supplies the guide's latent samples from noise drawn for the global batch.

    ``rows`` is this process's slice of the global batch of size ``global_size``. The data plate
    is the rightmost batch dimension of every latent site (the model's contract); vectorized
    particles sit to its left and are drawn in full. Only Normal sites (the VAE's guide) take
    noise from here. ``draws`` records each draw as ``(global_shape, data_dim)``, in order, so
    that a traced step can draw the same numbers outside its graph (see :func:`draw`).
    """

    def __init__(self, generator, global_size, rows):
        super().__init__()
        self.generator, self.global_size, self.rows = generator, global_size, rows
        self.draws = []

    def _pyro_sample(self, msg):
        base = latent_noise_site(msg)
        if base is None:
            return
        shape = msg["fn"].shape()
        data_dim = len(shape) - msg["fn"].event_dim - 1
        global_shape = shape[:data_dim] + (self.global_size,) + shape[data_dim + 1 :]
        self.draws.append((global_shape, data_dim))
        msg["value"] = base.loc + base.scale * draw(self.generator, global_shape, data_dim, self.rows, base.loc)


def draw(generator, global_shape, data_dim, rows, like):
    """Standard-normal noise for the global batch, cut to this process's ``rows``."""
    eps = torch.randn(global_shape, generator=generator, device=like.device, dtype=like.dtype)
    return eps[(slice(None),) * data_dim + (rows,)]


class GivenNoise(Messenger):
    """Supplies the guide's latent samples from noise passed in, one tensor per site in the order
    :class:`ShardNoise` draws them: the same z = loc + scale * eps, with eps a traced graph's input."""

    def __init__(self, eps):
        super().__init__()
        self.eps = list(eps)

    def _pyro_sample(self, msg):
        base = latent_noise_site(msg)
        if base is not None:
            msg["value"] = base.loc + base.scale * self.eps.pop(0)


def binarization_uniforms(generator, global_size, rows, x):
    """The uniforms of dynamic binarization for the global batch, cut to ``rows``: a step draws
    these first, then the guide's noise; pixel i is 1 where u_i < its grey level."""
    return torch.rand(global_size, x.shape[1], generator=generator, device=x.device)[rows]
