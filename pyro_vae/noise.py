"""All of training's randomness as a function of (seed, epoch) and (seed, step) alone.

An epoch's shuffle comes from a generator seeded by the epoch; each step draws its random numbers
for the *global* batch from a generator seeded by the step, in a fixed order: first the uniforms
of dynamic binarization, then the standard-normal noise of the guide's reparameterized sample
z = loc + scale * eps (pushed through the guide family's transform: a Cholesky factor, a flow).
A process then keeps the rows of its own shard. So one process, or N
processes each holding 1/N of the batch, see exactly the same numbers, and a resumed run
continues exactly where it stopped, with no generator state to carry.

Each kind of draw has its own stream space (:data:`STREAMS`): the generator of stream
``(kind, index)`` of a run is seeded from NumPy's ``SeedSequence`` of ``(seed, kind, index)``, so
no two kinds, indices or seeds share a generator (epoch e's shuffle and step e - 1's noise once did).
"""

import numpy as np
import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger

from .errors import UserError


# the kinds of draw; a new kind takes the next number, and the numbers never change
STREAMS = {"shuffle": 0, "step": 1, "train_pixels": 2, "test_pixels": 3, "labelled_choice": 4, "labelled_shuffle": 5}
SEED_RANGE = (0, 2**32 - 1)


def check_seed(seed, option):
    """Refuse, naming ``option``, a seed outside what NumPy and torch both accept."""
    low, high = SEED_RANGE
    if not low <= seed <= high:
        raise UserError(f"{option} must lie in {low}..{high}, got {seed}")


def seeded(seed, kind, index=0, device="cpu"):
    """The generator of draw ``index`` of ``kind`` (a key of :data:`STREAMS`) in a run seeded ``seed``."""
    state = np.random.SeedSequence(seed, spawn_key=(STREAMS[kind], index)).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def epoch_order(n, seed, epoch, device):
    """The shuffle of epoch ``epoch``, the same in every process and after a restart."""
    return torch.randperm(n, generator=seeded(seed, "shuffle", epoch)).to(device)


def labelled_cycle(n, length, seed, epoch, device):
    """``length`` indices into the ``n`` labelled images for epoch ``epoch``: fresh shuffles of
    them end to end, so a small labelled set is cycled alongside the epoch's batches."""
    generator = seeded(seed, "labelled_shuffle", epoch)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-length // n))])[:length].to(device)


class StepNoise(Messenger):
    """The random numbers of one training step, for this process's ``rows`` of a global batch
    of ``global_size``: :meth:`binarize` draws the pixels, and, as a Pyro messenger, it supplies
    the guide's latent samples.

    The data plate is the rightmost batch dimension of every latent site (the model's contract);
    vectorized particles sit to its left and are drawn in full. Only latent sites that are a
    function of standard-normal noise take noise from here (every guide family's; see
    :func:`from_standard_normal`); a discrete site draws nothing here (the semi-supervised
    label is enumerated: all its values at once). ``draws`` records each site's draw as ``(global_shape,
    data_dim)``, in order, so that a compiled step can draw the same numbers outside its graph
    (:meth:`uniforms`, then :meth:`normal` for each) and pass them in (:class:`GivenNoise`).
    """

    def __init__(self, seed, step, global_size, rows, device):
        super().__init__()
        self.generator = seeded(seed, "step", step, device)
        self.global_size, self.rows = global_size, rows
        self.draws = []

    def uniforms(self, x):
        """The binarization uniforms of this process's pixels ``x``: pixel i is 1 where u_i < x_i."""
        return torch.rand(self.global_size, x.shape[1], generator=self.generator, device=x.device)[self.rows]

    def binarize(self, x):
        """Dynamic binarization of this process's grey pixels ``x``: one Bernoulli draw each."""
        return (self.uniforms(x) < x).to(x.dtype)

    def normal(self, global_shape, data_dim, like):
        """Standard-normal noise for the global batch, cut to this process's rows."""
        eps = torch.randn(global_shape, generator=self.generator, device=like.device, dtype=like.dtype)
        return eps[(slice(None),) * data_dim + (self.rows,)]

    def _pyro_sample(self, msg):
        reparameterized = latent_sample(msg)
        if reparameterized is None:
            return
        sample, like = reparameterized
        # an enumerated label (the semi-supervised model's) takes no noise: its values are all of
        # its classes; a z that depends on it carries the enumeration dimension left of the data
        # plate and, like vectorized particles, draws noise for each value in full
        shape = msg["fn"].shape()
        data_dim = len(shape) - msg["fn"].event_dim - 1
        global_shape = shape[:data_dim] + (self.global_size,) + shape[data_dim + 1 :]
        self.draws.append((global_shape, data_dim))
        msg["value"] = sample(self.normal(global_shape, data_dim, like))


class GivenNoise(Messenger):
    """Supplies the guide's latent samples from noise passed in, one tensor per site in the order
    :class:`StepNoise` draws them: the same z as there, with eps a traced graph's input."""

    def __init__(self, eps):
        super().__init__()
        self.eps = list(eps)

    def _pyro_sample(self, msg):
        reparameterized = latent_sample(msg)
        if reparameterized is not None:
            msg["value"] = reparameterized[0](self.eps.pop(0))


def latent_sample(msg):
    """``(eps -> z, a tensor of z's device and dtype)`` for a latent site whose value the step's
    noise supplies, else ``None``: observed or already-valued sites and plates' subsample sites
    sample as usual."""
    if msg["is_observed"] or msg["value"] is not None:
        return None
    return from_standard_normal(msg["fn"])


def from_standard_normal(fn):
    """``(eps -> z, a tensor of z's device and dtype)``: the reparameterized sample of ``fn`` as a
    function of standard-normal noise of shape ``fn.shape()``, for the distributions guide
    families build (a Normal, independent or not; a MultivariateNormal; a TransformedDistribution
    of those, whose transforms then cache their input as its ``rsample`` would, so its
    ``log_prob`` of the result needs no inversion); ``None`` for any other distribution."""
    if isinstance(fn, dist.Independent):
        return from_standard_normal(fn.base_dist)
    if isinstance(fn, dist.Normal):
        return (lambda eps: fn.loc + fn.scale * eps), fn.loc
    if isinstance(fn, dist.MultivariateNormal):
        return (lambda eps: fn.loc + (fn.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)), fn.loc
    if isinstance(fn, dist.TransformedDistribution):
        base = from_standard_normal(fn.base_dist)
        if base is None or fn.base_dist.shape() != fn.shape():
            return None

        def sample(eps):
            z = base[0](eps)
            for transform in fn.transforms:
                z = transform(z)
            return z

        return sample, base[1]
    return None
