r"""The stochastic layers above the bottom one, for a hierarchical VAE (``model.layers``).

The bottom layer is today's: q(z|x) from the encoder and the posterior family, p(x|z) from the
decoder, at the site ``"z"``. Layer l = 2, 3, ... (``model.layers[l - 2]``) adds the site
``"z{l}"`` on top and joins it to the layer below it, z_{l-1}, in both directions, as in Burda et
al. (2015)'s two-layer model::

    generative (top-down):  p(z_{l-1} | z_l) = N(loc, diag scale^2),  (loc, scale) = down(z_l[, y])
    inference (bottom-up):  q(z_l | z_{l-1}) = family(up(z_{l-1}[, y]))

with ``up`` and ``down`` MLPs of the layer's ``hidden`` widths and ``family`` the layer's posterior
family (``guide``, diagonal by default; any registered one). The configured prior is on the top
layer. A one-layer VAE has no layers here, and is the same code with an empty stack.

Register a new kind of layer with ``@LAYERS.register("name")`` (``model.layers = [{type =
"name", ...}]``): an ``nn.Module`` built as ``cls(below_dim, num_classes, key, **params)`` (its
keyword-only arguments, ``latent_dim`` among them, are the config's parameters; ``key`` names the
layer in messages) with ``latent_dim``, ``family``, ``posterior(z_below, y_onehot)`` (q, a
reparameterized distribution with event shape ``(latent_dim,)``), ``encoded(z_below, y_onehot)``
(what the family is built from) and ``conditional(z, y_onehot)`` (p(z_below | z), event shape
``(below_dim,)``).
"""

import pyro.distributions as dist
from torch import nn

from .errors import UserError
from .guides import GUIDES
from .networks import ACTIVATIONS, MLPEncoder, call_net
from .registry import Registry

LAYERS = Registry("layer")
DEFAULT_LAYER = "gaussian"


def site_name(level):
    """The latent site of layer ``level``: ``"z"`` for the bottom layer (1), ``"z2"``, ``"z3"``, ... above."""
    return "z" if level == 1 else f"z{level}"


def layer_key(index):
    """How messages name ``model.layers[index]``, with the site it adds."""
    return f"model.layers[{index}] (site {site_name(index + 2)})"


def layer_spec(spec, key):
    """A layer's table with its ``type`` filled in (the Gaussian layer where none is named)."""
    if not isinstance(spec, dict):
        raise UserError(f"{key} must be a table such as {{latent_dim = 50, hidden = [100, 100]}}, got {spec!r}")
    return {"type": DEFAULT_LAYER, **spec}


@LAYERS.register(DEFAULT_LAYER)
class GaussianLayer(nn.Module):
    """Burda et al.'s stochastic layer: a diagonal Gaussian p(z_below | z) and the posterior family
    q(z | z_below), each through an MLP of widths ``hidden``."""

    def __init__(self, below_dim, num_classes, key, *, latent_dim=0, hidden=(100, 100), activation="tanh", guide="diagonal"):
        super().__init__()
        if latent_dim < 1:
            raise UserError(f"{key} needs latent_dim, a whole number of at least 1, got {latent_dim}")
        if not hidden or min(hidden) < 1:
            raise UserError(f"{key}: hidden must list at least one positive layer width, got {list(hidden)}")
        if activation not in ACTIVATIONS:
            raise UserError(f"{key}: activation = {activation!r} is not valid; choose one of: {', '.join(ACTIVATIONS)}")
        family_cls, family_params = GUIDES.resolve(guide, f"{key}.guide")
        self.latent_dim = latent_dim
        self.family = family_cls(latent_dim, **family_params)
        self.up = MLPEncoder(below_dim, latent_dim, num_classes, tuple(hidden), activation, self.family.extra_outputs)
        self.down = MLPEncoder(latent_dim, below_dim, num_classes, tuple(hidden), activation)

    def encoded(self, z_below, y_onehot=None):
        return call_net(self.up, z_below, y_onehot)

    def posterior(self, z_below, y_onehot=None):
        return self.family(self.encoded(z_below, y_onehot))

    def conditional(self, z, y_onehot=None):
        loc, scale = call_net(self.down, z, y_onehot)
        return dist.Normal(loc, scale).to_event(1)


def build_layers(specs, latent_dim, num_classes):
    """The stack above a bottom layer of ``latent_dim``, bottom-up, from ``model.layers``' tables."""
    layers, below = nn.ModuleList(), latent_dim
    for index, spec in enumerate(specs):
        key = layer_key(index)
        if isinstance(spec, nn.Module):
            layer = spec
        else:
            cls, params = LAYERS.resolve(layer_spec(spec, key), key)
            layer = cls(below, num_classes, key, **params)
        layers.append(layer)
        below = layer.latent_dim
    return layers
