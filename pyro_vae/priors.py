"""Priors p(z). Each is an ``nn.Module`` whose ``forward(encoder)`` returns a Pyro distribution
with ``event_shape == (latent_dim,)`` and empty batch shape; the model expands it over the data plate.

Register a new prior with ``@PRIORS.register("name")``; its keyword-only ``__init__`` arguments
become the parameters a config may set (``{type = "name", param = value}``).
"""

import pyro.distributions as dist
import torch
from torch import nn

from .errors import UserError
from .networks import call_net
from .registry import Registry

PRIORS = Registry("prior")


def diagonal_normal(loc, log_scale):
    return dist.Normal(loc, log_scale.exp()).to_event(1)


@PRIORS.register("normal")
class StandardNormal(nn.Module):
    """p(z) = N(0, I): the classic VAE prior, with a closed-form KL to a Gaussian q(z|x)."""

    def __init__(self, latent_dim, input_dim, num_classes=None):
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("log_scale", torch.zeros(latent_dim))

    def forward(self, encoder):
        return diagonal_normal(self.loc, self.log_scale)


@PRIORS.register("learned_normal")
class LearnedNormal(StandardNormal):
    """p(z) = N(m, diag(s^2)) with m and log s learned alongside the networks."""

    def __init__(self, latent_dim, input_dim, num_classes=None):
        super().__init__(latent_dim, input_dim)
        self.loc = nn.Parameter(self.loc)
        self.log_scale = nn.Parameter(self.log_scale)


class _Mixture(nn.Module):
    """Shared by the mixture priors: p(z) = sum_k w_k N(z; m_k, diag(s_k^2))."""

    def check(self, components, init_std):
        if components < 1:
            raise UserError(f"model.prior: {self.name}'s components must be at least 1, got {components}")
        # components started alike get alike gradients (equal weights), so they never part
        if not init_std > 0:
            raise UserError(f"model.prior: {self.name}'s init_std must be a positive number (components that start alike stay alike), got {init_std!r}")

    def mixture(self, logits, loc, scale):
        components = dist.Normal(loc, scale).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), components)


@PRIORS.register("mixture")
class GaussianMixture(_Mixture):
    """A learnable mixture of ``components`` diagonal Gaussians with unit scales and equal weights
    at the start; the means start near 0, each coordinate drawn from N(0, init_std^2). Near 0
    rather than spread at unit distance: the dimensions the model leaves unused then cost no KL
    from the first step, and the components part as the posteriors pull them apart."""

    def __init__(self, latent_dim, input_dim, num_classes=None, *, components=10, init_std=0.1):
        super().__init__()
        self.check(components, init_std)
        self.logits = nn.Parameter(torch.zeros(components))
        self.loc = nn.Parameter(torch.randn(components, latent_dim) * init_std)
        self.log_scale = nn.Parameter(torch.zeros(components, latent_dim))

    def forward(self, encoder):
        return self.mixture(self.logits, self.loc, self.log_scale.exp())


@PRIORS.register("vamp")
class VampPrior(_Mixture):
    """VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z | u_k), the encoder's posterior
    at K learned pseudo-inputs u_k, with gradients through the same encoder. As in the paper, each
    u_k is a free image clipped to [0, 1] by a hardtanh and starts near-blank, every pixel drawn
    from N(init_mean, init_std^2). In a conditional VAE pseudo-input k carries the label k mod
    num_classes. Whatever the guide family, the components are the Gaussian the encoder gives at
    the heart of it, N(loc(u_k), diag scale(u_k)^2): q(z|u_k) itself for the diagonal family (the
    paper's), and a density that needs no flow to be inverted for the others.
    """

    def __init__(self, latent_dim, input_dim, num_classes=None, *, components=500, init_mean=0.05, init_std=0.01):
        super().__init__()
        self.check(components, init_std)
        self.pseudo_inputs = nn.Parameter(torch.randn(components, input_dim) * init_std + init_mean)
        self.register_buffer("weights", torch.zeros(components))
        labels = None
        if num_classes:
            labels = nn.functional.one_hot(torch.arange(components) % num_classes, num_classes).float()
        self.register_buffer("labels", labels)

    def images(self):
        """The pseudo-inputs as images in [0, 1]."""
        return nn.functional.hardtanh(self.pseudo_inputs, 0.0, 1.0)

    def forward(self, encoder):
        loc, scale = call_net(encoder, self.images(), self.labels)[:2]
        return self.mixture(self.weights, loc, scale)
