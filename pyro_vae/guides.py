r"""Posterior families q(z|x), the guide's distribution over the latent site ``"z"``.

The encoder maps ``x`` (and a conditional VAE's label) to ``(loc, scale)`` and, for a family that
needs more, a third output of ``extra_outputs`` features; the family turns that tuple into a Pyro
distribution with ``event_shape == (latent_dim,)``. Every family is reparameterized, so ``Trace_ELBO``,
the IWAE bound and the compiled step take pathwise gradients through it.

- ``diagonal``: :math:`\mathcal N(\mu, \operatorname{diag}\sigma^2)`, the classic VAE encoder.
- ``full_rank``: :math:`\mathcal N(\mu, LL^\top)`, :math:`L = \operatorname{diag}(\sigma)(I + B)`
  with :math:`B` strictly lower-triangular, its :math:`D(D-1)/2` entries the encoder's extra
  outputs times ``off_diagonal_scale``: each row's off-diagonal entries are relative to that
  dimension's own scale.
- ``iaf``: inverse autoregressive flow (Kingma et al. 2016): :math:`z_0 \sim \mathcal N(\mu,
  \operatorname{diag}\sigma^2)`, then ``flows`` steps :math:`z_t = m_t + s_t \odot z_{t-1}`
  where :math:`(m_t, \log s_t)` come from a masked autoregressive network of :math:`z_{t-1}` and
  the encoder's ``context`` features (Pyro's ``ConditionalAffineAutoregressive``, log-scales
  clamped to [-5, 3]); with ``stable = True``, the paper's gated step :math:`z_t = s_t \odot
  z_{t-1} + (1 - s_t) \odot m_t`, :math:`s_t = \sigma(\cdot + 2)`. Because :math:`s_t` depends
  on :math:`z_{t-1}` only through earlier coordinates, the Jacobian is triangular and

  .. math:: \log q(z_T|x) = \log \mathcal N(z_0; \mu, \operatorname{diag}\sigma^2) -
            \sum_t \sum_i \log s_{t,i}.

Register a new family with ``@GUIDES.register("name")`` (or ``pyro_vae.register_guide``): an
``nn.Module`` built as ``cls(latent_dim, **params)`` (its keyword-only arguments are the config's
parameters) with an ``extra_outputs`` attribute, ``forward(encoded) -> distribution`` and
``moments(encoded) -> (mean, std)``; ``gaussian_marginals = True`` where each dimension's marginal
under q is exactly the Gaussian with those moments (``pyro-vae explore`` says when it is not).
"""

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.distributions import register_kl

from .errors import UserError
from .registry import Registry

GUIDES = Registry("guide family")
# draws behind a flow's reported mean and standard deviation (`pyro-vae encode`, `reconstruct`)
MOMENT_SAMPLES = 256


def split_encoded(encoded, family):
    """``(loc, scale, extra)`` from the encoder's output; ``extra`` has no features for a family that
    reads none (or needs none: a full-rank Gaussian in one dimension), and an encoder of one's own
    that gives too few outputs is told what is missing."""
    if family.extra_outputs == 0:
        return encoded[0], encoded[1], encoded[0][..., :0]
    if len(encoded) != 3 or encoded[2].shape[-1] != family.extra_outputs:
        raise UserError(
            f"model.guide = {family.name} needs the encoder to return (loc, scale, extra) with {family.extra_outputs} extra features; "
            "use a built-in encoder (model.encoder.type = mlp or conv), which sizes its output for the guide, or return them from yours"
        )
    return encoded


@GUIDES.register("diagonal")
class Diagonal(nn.Module):
    """q(z|x) = N(loc, diag(scale^2)): a scale per dimension, no correlations."""

    extra_outputs = 0
    gaussian_marginals = True

    def __init__(self, latent_dim):
        super().__init__()

    def forward(self, encoded):
        loc, scale, _ = split_encoded(encoded, self)
        return dist.Normal(loc, scale).to_event(1)

    def moments(self, encoded):
        loc, scale, _ = split_encoded(encoded, self)
        return loc, scale


@GUIDES.register("full_rank")
class FullRank(nn.Module):
    """q(z|x) = N(loc, L L^T) with L = diag(scale) (I + B), B strictly lower-triangular and filled
    row by row with the encoder's D(D-1)/2 extra outputs times ``off_diagonal_scale``, so any
    correlation between dimensions can be expressed. The built-in encoders start B at zero:
    training starts from the diagonal family.

    Two choices, each measured on MNIST at 10 epochs (log p(x); the diagonal family: -98.01):
    scaling row i by scale_i keeps B on the scale of a regression coefficient, the same whether
    dimension i is pinned down by x or unused (-101.28 with B as L's raw entries, -100.45 scaled);
    and ``off_diagonal_scale = 0.1`` makes the couplings learn ten times slower than loc and scale
    under Adam, whose per-parameter steps do not shrink for gradients that are mostly noise, as
    B's are (it moves only the Monte Carlo reconstruction term): -97.89."""

    gaussian_marginals = True

    def __init__(self, latent_dim, *, off_diagonal_scale=0.1):
        super().__init__()
        if not off_diagonal_scale > 0:
            raise UserError(f"model.guide: full_rank's off_diagonal_scale must be a positive number, got {off_diagonal_scale!r}")
        self.extra_outputs = latent_dim * (latent_dim - 1) // 2
        self.off_diagonal_scale = float(off_diagonal_scale)

    def scale_tril(self, scale, below):
        # B is filled row by row through fixed integer positions, not a boolean mask as in
        # torch.distributions.utils.vec_to_tril_matrix: a mask traces to a size that depends on
        # tensor values, which inductor failed to compile on CUDA (torch 2.11)
        dim = scale.shape[-1]
        rows, cols = torch.tril_indices(dim, dim, offset=-1, device=scale.device)
        flat = below.new_zeros(below.shape[:-1] + (dim * dim,)).index_copy(-1, rows * dim + cols, self.off_diagonal_scale * below)
        unit = flat.unflatten(-1, (dim, dim)) + torch.eye(dim, dtype=scale.dtype, device=scale.device)
        return scale.unsqueeze(-1) * unit

    def forward(self, encoded):
        loc, scale, below = split_encoded(encoded, self)
        return dist.MultivariateNormal(loc, scale_tril=self.scale_tril(scale, below))

    def moments(self, encoded):
        loc, scale, below = split_encoded(encoded, self)
        return loc, self.scale_tril(scale, below).pow(2).sum(-1).sqrt()


@GUIDES.register("iaf")
class InverseAutoregressiveFlow(nn.Module):
    """``flows`` inverse autoregressive steps on top of the diagonal Gaussian, each a masked
    autoregressive network with layers ``hidden`` (each at least latent_dim wide) that reads the
    encoder's ``context`` features; ``stable`` picks the gated step (see the module docstring).
    Each step orders the dimensions by its own random permutation (drawn when the VAE is built,
    saved with it), so that every dimension can depend on every other after two steps.

    The affine step is the default: on MNIST at 10 epochs it gave log p(x) -97.8 against the gated
    step's -99.2 and the diagonal family's -98.0 (docs/guides.md)."""

    def __init__(self, latent_dim, *, flows=2, hidden=(320,), context=50, stable=False):
        super().__init__()
        hidden = list(hidden)
        if flows < 1:
            raise UserError(f"model.guide: an iaf needs flows of at least 1, got {flows}")
        if latent_dim < 2:  # an autoregressive step on one coordinate is a fixed affine map
            raise UserError("model.guide: an iaf needs model.latent_dim of at least 2 (in one dimension a flow adds nothing to the diagonal Gaussian); "
                            "use model.guide = \"diagonal\"")
        if context < 1:
            raise UserError(f"model.guide: an iaf needs context of at least 1 feature, got {context}")
        if not hidden or min(hidden) < latent_dim:
            raise UserError(
                f"model.guide: every iaf hidden layer must be at least latent_dim = {latent_dim} wide "
                f"(an autoregressive network needs a unit per input), got hidden = {hidden}"
            )
        self.extra_outputs = context
        self.flows = nn.ModuleList(
            ConditionalAffineAutoregressive(ConditionalAutoRegressiveNN(latent_dim, context, hidden), stable=stable)
            for _ in range(flows)
        )
        # each step starts as the identity (gated: z_t = sigmoid(2) z_{t-1}): training starts
        # from the diagonal Gaussian, with no random distortion to undo
        with torch.no_grad():
            for flow in self.flows:
                flow.nn.layers[-1].weight.zero_()
                flow.nn.layers[-1].bias.zero_()

    def forward(self, encoded):
        loc, scale, context = split_encoded(encoded, self)
        # conditioned transforms cache their last input, so log q of a sample needs no inversion
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), [f.condition(context) for f in self.flows])

    def moments(self, encoded):
        """Mean and standard deviation of q(z|x) from ``MOMENT_SAMPLES`` draws (no closed form for
        a flow), the same draws on every call: the global RNG is left as it was."""
        with torch.random.fork_rng([encoded[0].device] if encoded[0].is_cuda else []):
            torch.manual_seed(0)
            z = self(encoded).rsample((MOMENT_SAMPLES,))
        return z.mean(0), z.std(0)


@register_kl(dist.MultivariateNormal, dist.Independent)
def _kl_mvn_diagonal_normal(q, p):
    r"""KL(N(m, LL^T) || N(mu, diag s^2)), for ``mean_field`` with the full-rank family and a
    Gaussian prior:

    .. math:: \tfrac12 \Big[\sum_{ij} (L_{ij}/s_i)^2 + \sum_i \big(\tfrac{m_i - \mu_i}{s_i}\big)^2
              - D\Big] + \sum_i \log s_i - \sum_i \log L_{ii}.
    """
    if not (isinstance(p.base_dist, dist.Normal) and p.reinterpreted_batch_ndims == 1):
        raise NotImplementedError
    s = p.base_dist.scale
    tril = q.scale_tril
    trace = (tril / s.unsqueeze(-1)).pow(2).sum((-2, -1))
    mahalanobis = ((q.loc - p.base_dist.loc) / s).pow(2).sum(-1)
    log_det = s.log().sum(-1) - tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + mahalanobis - q.loc.shape[-1]) + log_det
