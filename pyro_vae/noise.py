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


class ShardNoise(Messenger):
    """Supplies the guide's latent samples from noise drawn for the global batch.

    ``rows`` is this process's slice of the global batch of size ``global_size``. The data plate
    is the rightmost batch dimension of every latent site (the model's contract); vectorized
    particles sit to its left and are drawn in full. Only Normal sites (the VAE's guide) take
    noise from here.
    """

    def __init__(self, generator, global_size, rows):
        super().__init__()
        self.generator, self.global_size, self.rows = generator, global_size, rows

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
