"""The VAE as a pair of Pyro programs.

Generative model::

    z ~ p(z)                       (site "z", event_dim 1)
    x ~ p(x | decoder(z[, y]))     (site "x", .to_event(1) over the flattened pixels)

Guide: ``z ~ q(z | encoder(x[, y]))``, a posterior family from guides.py (by default the diagonal
Gaussian N(loc, diag(scale^2)) with ``(loc, scale) = encoder(x[, y])``).

A hierarchical VAE (``layers``, layers.py) stacks sites ``"z2"``, ``"z3"``, ... above ``"z"``; the
prior is on the top one, the model runs top-down and the guide bottom-up (Burda et al. 2015)::

    z_L ~ p(z_L),  z_{l-1} ~ p(z_{l-1} | z_l), ...,  x ~ p(x | decoder(z[, y]))     (model)
    z ~ q(z | encoder(x[, y])),  z_l ~ q(z_l | z_{l-1}), ...                       (guide)

The one-layer VAE is the case of an empty stack: its top layer is ``"z"``.

A conditional VAE (``num_classes``) takes y as an input of both networks: the model is
p(x, z | y) and its ELBO bounds log p(x | y). A semi-supervised one (``classifier``, Kingma et al.
2014's M2) makes y a Pyro site as well::

    y ~ p(y) = Categorical(1/C, ..., 1/C)   (site "y", observed where the label is known)
    y ~ q(y | classifier(x))                (the guide's site, enumerated where it is not)

Labels are a tensor of class indices with ``-1`` marking an unknown one (scikit-learn's
convention for unlabelled points). ``y=None`` leaves every label unknown. With some labels given
the model's site is Pyro's ``obs_mask`` pair (``"y_observed"``, ``"y_unobserved"``); the guide's
``"y_unobserved"`` is q(y|x) on the unknown rows and a point mass at the label on the known ones,
so that enumerating it sums over the classes where the label is unknown and keeps only the true
class where it is known. Both run inside
``pyro.plate("data", B)`` and register every parameter through ``pyro.module``, so they work
with any Pyro inference: ``SVI`` with ``Trace_ELBO``, ``TraceMeanField_ELBO`` or ``RenyiELBO``,
``Predictive``, ``poutine.trace``.
"""

import contextlib
import itertools

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .errors import UserError
from .guides import GUIDES, MOMENT_SAMPLES
from .layers import build_layers, site_name
from .likelihoods import LIKELIHOODS
from .networks import INIT_BIASES, build_classifier, build_decoder, build_encoder, call_net
from .priors import PRIORS

# Pyro keeps parameters in one global store keyed by name: a second VAE registered under the same
# name would silently be handed the first one's tensors. Each instance gets its own name.
_instance_ids = itertools.count()
UNKNOWN = -1  # the label of an image whose label is not known
# the log-weight a known label's point mass gives the other classes: exp of it is exactly 0 in
# float32 and float64, so Pyro's enumeration drops those terms, and unlike -inf it keeps the
# classes' costs finite (0 * inf would be NaN)
IMPOSSIBLE = -1e4


class VAE(nn.Module):
    """A VAE whose ``model`` and ``guide`` are Pyro programs (see the module docstring).

    ``prior``, ``likelihood`` and ``guide`` (the posterior family q(z|x): ``diagonal``,
    ``full_rank``, ``iaf``) take a registered name or ``{"type": name, **params}``;
    ``encoder`` / ``decoder`` take a network config dict (``type``, ``hidden``, ``channels``,
    ``activation``) or any ``nn.Module``: ``encoder(x[, y_onehot]) -> (loc, scale)`` (followed by
    the family's ``extra_outputs`` features for a family that reads them),
    ``decoder(z[, y_onehot]) -> one likelihood parameter per pixel``. ``num_classes`` makes it a
    conditional VAE: labels y are then required by ``model``, ``guide`` and ``sample``.
    ``classifier`` (a network config dict or an ``nn.Module`` from x to C logits) makes it
    semi-supervised: y becomes a Pyro site and may be unknown (``-1``, or ``y=None`` for all).
    ``layers`` (``model.layers``' tables, or layer modules; layers.py) stacks stochastic layers
    above z; ``latent_dim``, ``encoder``, ``decoder`` and ``guide`` remain the bottom layer's, and
    ``prior`` is on the top one.

    A decoder config's ``init_bias`` (``"data"``, the default, or ``"default"``) says whether
    :meth:`init_from_data` starts the decoder's output at the training data's mean pixel.
    """

    def __init__(
        self,
        input_dim=784,
        latent_dim=50,
        prior="normal",
        likelihood="bernoulli",
        encoder=None,
        decoder=None,
        num_classes=None,
        guide="diagonal",
        classifier=None,
        layers=(),
    ):
        super().__init__()
        if latent_dim < 1 or input_dim < 1:
            raise UserError(f"latent_dim and input_dim must be at least 1, got {latent_dim} and {input_dim}")
        self.input_dim = input_dim
        self.latent_dim = latent_dim
        self.num_classes = num_classes or None
        n_cls = num_classes or 0
        guide_cls, guide_params = GUIDES.resolve(guide, "model.guide")
        self.family = guide_cls(latent_dim, **guide_params)
        self.encoder = build_encoder(encoder, input_dim, latent_dim, n_cls, self.family.extra_outputs)
        self.decoder = build_decoder(decoder, latent_dim, input_dim, n_cls)
        self.layers = build_layers(layers, latent_dim, n_cls)  # empty for one layer: no state_dict keys
        if classifier is not None:
            if not num_classes:
                raise UserError("a semi-supervised VAE (a classifier q(y|x)) needs num_classes: labels to learn from")
            # only built when asked for: a CVAE's state_dict keeps exactly its keys
            self.classifier = build_classifier(classifier, input_dim, num_classes)
        self.semi_supervised = classifier is not None
        self.pending_data_init = self._init_bias(decoder) == "data"
        prior_cls, prior_params = PRIORS.resolve(prior, "model.prior")
        self.top_dim = self.layers[-1].latent_dim if self.layers else latent_dim
        self.prior = prior_cls(self.top_dim, input_dim, num_classes, **prior_params)
        likelihood_cls, likelihood_params = LIKELIHOODS.resolve(likelihood, "model.likelihood")
        self.likelihood = likelihood_cls(input_dim, **likelihood_params)
        self.pyro_name = f"vae{next(_instance_ids)}"
        # pyro.module sends every parameter through Pyro's effect stack on each call, which is
        # how SVI with pyro.optim finds them (about a third of a millisecond per call on CPU).
        # The package's trainer owns the parameters through its own torch optimizer and turns
        # this off in its hot loop; see ``parameters_registered``.
        self.register_params = True

    @staticmethod
    def _init_bias(decoder):
        choice = decoder.get("init_bias", "data") if isinstance(decoder, dict) else "data"
        if choice not in INIT_BIASES:
            raise UserError(f"decoder init_bias = {choice!r} is not valid; choose one of: {', '.join(INIT_BIASES)}")
        return choice

    @torch.no_grad()
    def init_from_data(self, x):
        """Start the decoder's output bias at the output whose mean is the mean training pixel of
        ``x`` (the logit for Bernoulli pixels, the mean itself for location-scale likelihoods), as
        Burda et al. (2015) do: on MNIST the reconstruction term then starts near the pixels' own
        entropy, about -206 nats, rather than near 784 log 1/2 = -543, and the first steps train z
        instead of the pixel averages (docs/benchmarks.md: 4.5 nats at 10 epochs; without it the
        VampPrior collapses).

        Runs once, on a fresh VAE: a VAE whose weights were loaded, or already initialized, is left
        alone, as is any decoder of your own without an ``init_output(pixel_mean, output_for_mean)``
        method and any likelihood whose ``output_for_mean`` returns ``None``."""
        if not self.pending_data_init:
            return
        self.pending_data_init = False
        pixel_mean = x.mean(0).to(self.device)
        init_output = getattr(self.decoder, "init_output", None)
        if init_output is not None and self.likelihood.output_for_mean(pixel_mean) is not None:
            init_output(pixel_mean, self.likelihood.output_for_mean)

    def load_state_dict(self, state_dict, *args, **kwargs):
        self.pending_data_init = False  # trained weights are never overwritten by a fresh start
        return super().load_state_dict(state_dict, *args, **kwargs)

    # -- labels ---------------------------------------------------------------------------
    def onehot(self, y):
        """One-hot labels for a conditional VAE (``None`` for an unconditional one)."""
        if self.num_classes is None:
            return None
        if y is None:
            raise UserError("this VAE is conditional: pass the labels y alongside x (or use an unconditional model)")
        return torch.zeros(y.shape + (self.num_classes,), device=y.device).scatter_(-1, y.long().unsqueeze(-1), 1.0)

    def check_labels(self, y, n):
        """Validate labels once at an entry point (not per step: it syncs with the device)."""
        if self.num_classes is None:
            return
        if y is None:
            raise UserError("this VAE is conditional: labels y are required (set data labels or pass y=...)")
        if y.shape != (n,):
            raise UserError(f"labels must have shape ({n},), one per datum, got {tuple(y.shape)}")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise UserError(f"labels must be integers, got dtype {y.dtype}")
        low = UNKNOWN if self.semi_supervised else 0
        if n and (y.min() < low or y.max() >= self.num_classes):
            unknown = f" (or {UNKNOWN} for an unknown label)" if self.semi_supervised else ""
            raise UserError(
                f"labels must lie in 0..{self.num_classes - 1}{unknown}, got values from {int(y.min())} to {int(y.max())}"
            )

    # -- the Pyro programs ----------------------------------------------------------------
    def _register(self):
        if self.register_params:
            pyro.module(self.pyro_name, self)

    @contextlib.contextmanager
    def parameters_registered(self, registered):
        """Temporarily switch ``pyro.module`` registration on or off (the trainer turns it off)."""
        previous, self.register_params = self.register_params, registered
        try:
            yield self
        finally:
            self.register_params = previous

    def model(self, x, y=None):
        self._register()
        with pyro.plate("data", x.shape[0]):
            if self.semi_supervised:
                known = None if y is None else y != UNKNOWN
                # obs_mask=None: one site "y", observed (y given) or latent (y=None)
                y = pyro.sample("y", self.label_prior(x), obs=None if y is None else y.clamp(min=0), obs_mask=known)
            y_onehot = self.onehot(y)
            z = pyro.sample(self.top_site, self.prior_distribution())
            for level in range(len(self.layers), 0, -1):  # top-down, to the bottom layer's "z"
                z = pyro.sample(site_name(level), self.layers[level - 1].conditional(z, y_onehot))
            out = call_net(self.decoder, z, y_onehot)
            pyro.sample("x", self.likelihood(out), obs=x)

    def guide(self, x, y=None):
        self._register()
        with pyro.plate("data", x.shape[0]):
            if self.semi_supervised:
                y = self._guide_label(x, y)
            y_onehot = self.onehot(y)
            z = pyro.sample("z", self.posterior(x, y))
            for level, layer in enumerate(self.layers, start=2):  # bottom-up
                z = pyro.sample(site_name(level), layer.posterior(z, y_onehot))

    @property
    def latent_sites(self):
        """The latent sites of z, bottom-up: ``["z"]`` for one layer, ``["z", "z2", ...]`` for a stack."""
        return [site_name(level) for level in range(1, len(self.layers) + 2)]

    @property
    def top_site(self):
        """The site the prior is on."""
        return self.latent_sites[-1]

    def _guide_label(self, x, y):
        """The guide's label site: q(y|x) where y is unknown, a point mass where it is known;
        enumerated in parallel under ``TraceEnum_ELBO`` (sampled under any other inference)."""
        logits = self.classifier(x)
        if y is None:
            return pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
        known = (y != UNKNOWN).unsqueeze(-1)
        point_mass = torch.where(self.onehot(y.clamp(min=0)) > 0, 0.0, IMPOSSIBLE).to(logits.dtype)
        site = dist.Categorical(logits=torch.where(known, point_mass, logits))
        return pyro.sample("y_unobserved", site, infer={"enumerate": "parallel"})

    def label_prior(self, x):
        """p(y): uniform over the classes (Kingma et al.'s choice), one per datum of ``x``."""
        return dist.Categorical(logits=torch.zeros(self.num_classes, dtype=x.dtype, device=x.device))

    def classifier_model(self, x, y):
        """The supervised term as a Pyro program: ``-log q(y|x)`` of each known label is the
        log-density of an observed site (as the auxiliary loss of Pyro's SS-VAE example); its
        ``Trace_ELBO`` loss with an empty guide is the cross-entropy summed over known labels."""
        self._register()
        with pyro.plate("data", x.shape[0]):
            known = y != UNKNOWN
            pyro.sample("y_classified", dist.Categorical(logits=self.classifier(x)).mask(known), obs=y.clamp(min=0))

    @torch.no_grad()
    def classify(self, x):
        """q(y|x) as class probabilities (N, C), in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return self.classifier(x).softmax(-1)
        finally:
            self.train(was_training)

    # -- conveniences ---------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n, y=None, z=None, means_below=False):
        """Draw ``n`` images from the model: z ~ p(z) on the top layer (or the given ``z``), each
        layer below drawn from p(z_{l-1} | z_l) (or at its mean, ``means_below``), returning
        E[x | z, y].

        ``y`` is an int label or a tensor of ``n`` labels for a conditional VAE. Uses torch's
        global RNG, so ``torch.manual_seed`` / ``pyro.set_rng_seed`` make it reproducible.
        """
        device = self.device
        if y is not None:
            y = torch.as_tensor(y, device=device)
            y = y.expand(n) if y.dim() == 0 else y
        self.check_labels(y, n)
        if z is None:
            z = self.prior_distribution().sample((n,))
        y_onehot = self.onehot(y)
        for layer in reversed(self.layers):
            below = layer.conditional(z, y_onehot)
            z = below.mean if means_below else below.sample()
        return self.decode(z, y)

    def prior_distribution(self):
        """p(z) on the top layer as a Pyro distribution with event shape (top_dim,) (a VampPrior's
        depends on the encoder, which is why the prior is handed it: for a stack, the bottom-up
        encoder through every layer, :meth:`_top_encoder`)."""
        return self.prior(self._top_encoder if self.layers else self.encoder)

    def _top_encoder(self, x, y_onehot=None):
        """What the top layer's family is built from, for ``x``: each layer below at the location of
        the Gaussian at the heart of its family (the mean, for the diagonal and full-rank families)."""
        encoded = call_net(self.encoder, x, y_onehot)
        for layer in self.layers:
            encoded = layer.encoded(encoded[0], y_onehot)
        return encoded

    def posterior(self, x, y=None):
        """q(z|x[, y]) as a Pyro distribution with batch shape (N,) and event shape (latent_dim,)."""
        return self.family(call_net(self.encoder, x, self.onehot(y)))

    def labels_per_class(self, n):
        """``n`` labels of each class in turn (0, 0, ..., 1, 1, ...): a grid with a row per class."""
        return torch.arange(self.num_classes, device=self.device).repeat_interleave(n)

    @torch.no_grad()
    def encode(self, x, y=None):
        """``(loc, scale)``: the mean and the standard deviation of each dimension of q(z|x[, y])
        for each datum (exact for the Gaussian families, from a fixed set of draws for a flow),
        computed in eval mode (a network with dropout or batch norm gives its deterministic answer)."""
        was_training = self.training
        self.eval()
        try:
            return self.family.moments(call_net(self.encoder, x, self.onehot(y)))
        finally:
            self.train(was_training)

    @torch.no_grad()
    def encode_layers(self, x, y=None):
        """``{site: (mean, std)}`` of every layer's marginal under q for each datum, bottom-up: the
        bottom layer's exactly as :meth:`encode`, the ones above from ``MOMENT_SAMPLES`` draws of the
        layers below them (the same draws on every call: the global RNG is left as it was)."""
        layers = {"z": self.encode(x, y)}
        if not self.layers:
            return layers
        was_training = self.training
        self.eval()
        try:
            with torch.random.fork_rng([x.device] if x.is_cuda else []):
                torch.manual_seed(0)
                y_onehot = self.onehot(y)
                z = self.posterior(x, y).sample((MOMENT_SAMPLES,))
                for level, layer in enumerate(self.layers, start=2):
                    z = layer.posterior(z, y_onehot).sample()
                    layers[site_name(level)] = (z.mean(0), z.std(0))
        finally:
            self.train(was_training)
        return layers

    @torch.no_grad()
    def reconstruct(self, x, y=None):
        """E[x | z = mean of q(z|x)]: the reconstruction through the posterior mean."""
        return self.decode(self.encode(x, y)[0], y)

    @torch.no_grad()
    def decode(self, z, y=None):
        """E[x | z[, y]] at the bottom layer's ``z`` (N, latent_dim)."""
        return self.likelihood.mean(call_net(self.decoder, z, self.onehot(y)))

    @property
    def device(self):
        return next(self.parameters()).device

    @property
    def dtype(self):
        """The floating-point precision of the VAE's tensors (float32 unless converted)."""
        tensors = itertools.chain(self.parameters(), self.buffers())
        return next((t.dtype for t in tensors if t.is_floating_point()), torch.get_default_dtype())
