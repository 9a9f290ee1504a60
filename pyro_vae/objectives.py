r"""The training objectives named by ``train.objective``, each a Pyro ELBO over a model and a guide.

Every objective is registered by name (``train.objective = "iwae"``, or a table with its
parameters, ``train.objective = {type = "piwae", bounds = 8}``) and is one subclass of
:class:`Objective`: Pyro draws the guide's ``num_particles`` samples of each latent site at once
(a vectorized particle plate) and replays the model against them; :meth:`Objective.reduce` turns
that (model trace, guide trace) pair into the loss, a tensor expression whose value is the
negative bound summed over the data and whose gradient is the objective's estimator. Eager
training (``differentiable_loss``), the compiled step (which traces the same
``differentiable_loss`` into a graph) and Pyro's ``SVI`` (``loss_and_grads``) all call it, so there
is one definition of each objective. Each works outside the package as Pyro's ``RenyiELBO``
does::

    SVI(vae.model, vae.guide, optim, pyro_vae.objectives.DReG_IWAE(num_particles=50))

on any model and guide whose latent sites are reparameterized and vectorize over particles.

Notation: :math:`w_k = p(x, z_k) / q_\phi(z_k|x)` with :math:`z_k = z_\phi(\epsilon_k)`, the
normalized weights :math:`\tilde w_k = w_k / \sum_j w_j`. A gradient has three channels: the
model's parameters at fixed z (the decoder, a learned prior), the path through z
(:math:`\partial_z \log w_k \, \partial_\phi z_k`) and the guide's score at fixed z
(:math:`\partial_\phi \log q_\phi(z_k)`, zero in expectation). The doubly reparameterized and
sticking-the-landing estimators drop the score channel; they evaluate :math:`\log q` at the sample
with the guide's distribution parameters detached (:func:`rebuilt`), and reweight the path
channel with a gradient hook on each latent sample (:func:`scale_latent_gradients`), which
``torch.func`` and ``make_fx`` trace like any other backward operation.
"""

import functools
import math

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.transforms import AffineAutoregressive
from pyro.distributions.transforms.utils import clamp_preserve_gradients
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceEnum_ELBO
from pyro.infer.elbo import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match
from torch.distributions import kl_divergence

from .errors import UserError
from .registry import Registry

OBJECTIVES = Registry("objective")


def latent_sites(guide_trace):
    """``(name, site)`` of the guide's latent sample sites."""
    return [(name, site) for name, site in guide_trace.nodes.items() if site["type"] == "sample" and not site["is_observed"]]


def site_log_prob(site):
    """The site's own log-density of its value, scaled and masked (what Pyro's traces hold)."""
    return site["log_prob"]


def stopped_parameters(site):
    r""":math:`\log q_{\bar\phi}(z)`: the site's log-density at its value with its gradient reaching the
    parameters only through z. For a site of a guide with one latent site, its distribution
    re-evaluated with its parameters detached; in a guide with several (:func:`rescored_traces`),
    :math:`\log q_\phi(z)` at live samples minus its score channel, :func:`stopped_value` (the same
    number, whose gradient is the score alone)."""
    if "score_site" not in site:
        return scale_and_mask(rebuilt(site["fn"], site["name"]).log_prob(site["value"]), site["scale"], site["mask"])
    live = scale_and_mask(rebuilt(site["fn"], site["name"], detach=False).log_prob(site["value"]), site["scale"], site["mask"])
    score = stopped_value(site)
    return live - score + score.detach()


def stopped_value(site):
    r""":math:`\log q_\phi(\bar z)`: the site's log-density at its detached value (and, in a guide with
    several latent sites, given the detached values of the others), whose gradient is the score
    channel alone (for a flow this inverts it: its cached intermediates are z's, not the
    detached value's)."""
    site = site.get("score_site", site)
    return scale_and_mask(rebuilt(site["fn"], site["name"], detach=False).log_prob(site["value"].detach()), site["scale"], site["mask"])


def rescored_traces(model, guide, guide_trace, args, kwargs):
    r"""The (model, guide) traces a stopped-parameter estimator reduces, for a guide with several
    latent sites, where a site's distribution is a function of the samples of the sites below it
    (a hierarchy's :math:`q(z_2 | z_1)`): detaching its parameters would cut the path through
    :math:`z_1` too, and a gradient hook on :math:`z_1`'s sample would scale the path through
    :math:`z_2` a second time.

    So the loss reads the samples through fresh autograd nodes :math:`z'` (views of them: the
    hooks of :func:`scale_latent_gradients` sit there, at the one boundary between the loss and
    the guide's sampling graph): the guide is replayed at :math:`z'` (its distributions built from
    the fresh nodes, parameters live) and the model replayed against that; a second replay at the
    detached samples gives each site's score channel alone (``"score_site"``). Their difference is
    :math:`\log q_{\bar\phi}(z)` as a function of z."""
    fresh = {name: site["value"].view_as(site["value"]) for name, site in latent_sites(prune_subsample_sites(guide_trace))}
    live = poutine.trace(poutine.replay(guide, trace=_with_values(guide_trace, fresh))).get_trace(*args, **kwargs)
    detached = {name: value.detach() for name, value in fresh.items()}
    fixed = poutine.trace(poutine.replay(guide, trace=_with_values(guide_trace, detached))).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=live)).get_trace(*args, **kwargs)
    live, fixed, model_trace = (prune_subsample_sites(t) for t in (live, fixed, model_trace))
    # the guide's own log_prob of a replayed flow would invert it in Python (Pyro's loop over its
    # permutation): its sites are scored by stopped_parameters / stopped_value alone
    model_trace.compute_log_prob()
    for name in fresh:
        live.nodes[name]["score_site"] = fixed.nodes[name]
    return model_trace, live


def _with_values(trace, values):
    """A copy of ``trace`` whose sites ``values`` names hold those values instead (for replay)."""
    copy = poutine.Trace()
    for name, site in trace.nodes.items():
        if site["type"] == "sample":
            copy.add_node(name, **{**site, "value": values.get(name, site["value"])})
    return copy


def log_weights(model_trace, guide_trace, guide_log_prob=site_log_prob):
    r"""The log importance weights :math:`\log p(x, z) - \log q(z|x)` of a guide trace and the model
    replayed against it: every sample site's log-density summed over sites, never over the
    plates, so the result keeps the particle and data dimensions (shape ``(..., B)``). The
    objectives and the log p(x) estimator all read their weights from here; ``guide_log_prob(site)``
    scores the guide's sites (:func:`stopped_parameters` for the estimators without the score channel).
    """
    model_trace.compute_log_prob()
    if guide_log_prob is site_log_prob:
        guide_trace.compute_log_prob()
    total = 0.0
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            total = total + site["log_prob"]
    for _, site in latent_sites(guide_trace):
        total = total - guide_log_prob(site)
    return total


def rebuilt(fn, name, detach=True):
    """``fn`` rebuilt to score values other than its own samples, from detached copies of its
    parameters (``detach``) or its live ones, for the families the guides build: a Normal
    (independent or not), a MultivariateNormal, and a TransformedDistribution of those by affine
    autoregressive flows, whose networks are called with detached copies of their weights and
    context (``torch.func.functional_call``). The rebuilt transforms hold no cache, so the flow's
    log-density at z inverts the flow from z (:class:`_FixedPointInverse`, which traces): the
    cached intermediates of the sample are functions of the parameters, and reading them would
    bring the score channel back. With ``detach`` a distribution of another kind is refused."""
    if isinstance(fn, dist.Independent):
        return dist.Independent(rebuilt(fn.base_dist, name, detach), fn.reinterpreted_batch_ndims)
    if isinstance(fn, dist.TransformedDistribution) and all(isinstance(t, AffineAutoregressive) for t in fn.transforms):
        return dist.TransformedDistribution(rebuilt(fn.base_dist, name, detach), [_flow_step(t, detach) for t in fn.transforms])
    if not detach:
        return fn
    if isinstance(fn, dist.Normal):
        return dist.Normal(fn.loc.detach(), fn.scale.detach())
    if isinstance(fn, dist.MultivariateNormal):
        return dist.MultivariateNormal(fn.loc.detach(), scale_tril=fn.scale_tril.detach())
    raise UserError(
        f"the guide's site '{name}' is a {type(fn).__name__}, whose log-density this objective cannot re-evaluate with its "
        "parameters' gradients stopped (it can for Normal, MultivariateNormal and affine autoregressive flows of them); "
        "use train.objective = iwae or elbo"
    )


def _flow_step(transform, detach):
    arn, kwargs = transform.arn, {}
    if isinstance(arn, functools.partial):  # a conditioned flow: the network and its context
        arn, kwargs = arn.func, {k: v.detach() if detach and torch.is_tensor(v) else v for k, v in arn.keywords.items()}
    weights = {name: p.detach() for name, p in arn.named_parameters()} if detach else {}
    network = functools.partial(lambda inputs, **kw: torch.func.functional_call(arn, weights, (inputs,), kw), **kwargs)
    network.permutation = arn.permutation
    return _FixedPointInverse(network, log_scale_min_clip=transform.log_scale_min_clip, log_scale_max_clip=transform.log_scale_max_clip,
                              sigmoid_bias=transform.sigmoid_bias, stable=transform.stable)


class _FixedPointInverse(AffineAutoregressive):
    """An affine autoregressive step inverted without reading its permutation's values, so that
    the inversion traces into a static graph (Pyro's loops over the permutation's entries, which a
    graph capture cannot see): D sweeps of ``x <- (y - m(x)) / s(x)`` from zero. The coordinate in
    place p of the autoregressive order depends only on places before it, so after sweep p it is
    exact as a function of y, and after D sweeps so is all of x, derivatives included."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._inverse = self._sweeps

    def _sweeps(self, y):
        x = torch.zeros_like(y)
        for _ in range(y.shape[-1]):
            mean, raw = self.arn(x)
            if self.stable:
                log_scale = self.logsigmoid(raw + self.sigmoid_bias)
                x = (y - (1 - log_scale.exp()) * mean) * (-log_scale).exp()
            else:
                log_scale = clamp_preserve_gradients(raw, self.log_scale_min_clip, self.log_scale_max_clip)
                x = (y - mean) * (-log_scale).exp()
        # the last sweep's scales are those at the final x (each reads only exact coordinates)
        self._cached_log_scale = log_scale
        return x


def scale_latent_gradients(guide_trace, factor):
    """Multiply the gradient that reaches each latent sample ``z[k, b]`` by ``factor[k, b]`` (shape
    ``(num_particles, B)``, detached): a hook on the guide's sample, so every path from z into the
    loss is reweighted and the model's parameters at fixed z are not."""
    factor = factor.detach()
    for name, site in latent_sites(guide_trace):
        value = site["value"]
        if not value.requires_grad:  # evaluation under no_grad
            continue
        batch = value.shape[: value.dim() - site["fn"].event_dim]
        if batch.numel() != factor.numel():
            raise UserError(f"the guide's site '{name}' has batch shape {tuple(batch)}: this objective reweights each particle's "
                            "gradient per datum, so every latent site must lie inside the data plate")
        f = factor.reshape(batch + (1,) * site["fn"].event_dim)
        value.register_hook(lambda grad, f=f: grad * f)


def check_reparameterized(guide_trace, objective):
    """The gradients here are pathwise: a guide site without ``rsample`` would silently get a
    biased gradient, so it is refused, as Pyro's ``RenyiELBO`` refuses it."""
    for name, site in latent_sites(guide_trace):
        if not getattr(site["fn"], "has_rsample", False):
            raise UserError(
                f"train.objective = {objective} needs a reparameterized guide, but the guide's site '{name}' ({type(site['fn']).__name__}) "
                "has no rsample; use a guide family with reparameterized samples (or Pyro's Trace_ELBO, which takes score-function gradients)"
            )


class Objective(ELBO):
    """A bound over ``num_particles`` vectorized samples per datum and its gradient estimator, as
    one tensor-only reduction :meth:`reduce` of the traces. The keyword-only arguments of a
    subclass's ``__init__`` are its config parameters (``{type = name, param = value}``).

    ``stops_parameters``: the estimator re-scores the guide with its gradient reaching the
    parameters only through the samples (:func:`stopped_parameters`); a guide with several latent
    sites is then replayed to do so (:func:`rescored_traces`)."""

    name = "objective"
    stops_parameters = False

    def __init__(self, num_particles=1, max_plate_nesting=1):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=True)

    def _get_trace(self, model, guide, args, kwargs):
        if not self.stops_parameters:
            return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)
        # Pyro's get_importance_trace, with the model replayed against the re-scored guide where
        # the guide has several latent sites (its noise is drawn once: the replays take its samples)
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        if len(latent_sites(prune_subsample_sites(guide_trace))) > 1:
            model_trace, guide_trace = rescored_traces(model, guide, guide_trace, args, kwargs)
        else:
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
            model_trace, guide_trace = prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)
            model_trace.compute_log_prob()
            guide_trace.compute_log_prob()
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        return model_trace, guide_trace

    def reduce(self, model_trace, guide_trace):
        """The loss (negative bound, summed over the data plate) of one vectorized (model, guide)
        trace pair; its gradient is the objective's estimator. Tensor operations only."""
        raise NotImplementedError

    def differentiable_loss(self, model, guide, *args, **kwargs):
        ((model_trace, guide_trace),) = self._get_traces(model, guide, args, kwargs)
        check_reparameterized(guide_trace, self.name)
        return self.reduce(model_trace, guide_trace)

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return torch_item(loss)

    def particles(self, log_w):
        """``log_w`` as ``(num_particles, B)`` (a particle plate of size 1 leaves no particle dimension)."""
        return log_w.reshape(self.num_particles, -1)

    def iwae_bound(self, log_w):
        r""":math:`\sum_b \log \frac1K \sum_k w_{kb}`; its gradient weighs particle k by :math:`\tilde w_k`."""
        return (torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()


@OBJECTIVES.register("elbo")
class ReparamELBO(Objective):
    r"""The ELBO with the Monte Carlo KL, :math:`\frac1K \sum_k \log w_k`, and its reparameterized
    gradient (Pyro's ``Trace_ELBO`` for a reparameterized guide, without its per-site ``.item()``)."""

    def reduce(self, model_trace, guide_trace):
        return -log_weights(model_trace, guide_trace).sum() / self.num_particles


@OBJECTIVES.register("mean_field")
class MeanFieldELBO(Objective):
    r"""The ELBO with the closed-form KL between the guide's and the model's latent site where one
    is registered (the diagonal and full-rank guides against the normal and learned_normal
    priors) and may be used (:func:`closed_form_kls`), as Pyro's ``TraceMeanField_ELBO`` does,
    and the Monte Carlo term otherwise (flows, mixture and VampPrior, the lower layers of a stack):
    :math:`\frac1K\sum_k \log p(x|z_k) - \mathrm{KL}(q(z|x)\,\|\,p(z))`."""

    def reduce(self, model_trace, guide_trace):
        elbo = 0.0
        kls = closed_form_kls(model_trace, guide_trace)
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            guide_site = guide_trace.nodes.get(name)
            if name in kls:
                elbo = elbo - scale_and_mask(kls[name], guide_site["scale"], guide_site["mask"]).sum()
                continue
            elbo = elbo + site["log_prob_sum"]
            if guide_site is not None and not site["is_observed"]:
                elbo = elbo - guide_site["log_prob_sum"]
        return -elbo / self.num_particles


def closed_form_kls(model_trace, guide_trace):
    r"""``{site: KL(q || p)}``, the closed-form KL terms of the model's latent sites where one is
    registered and may be used: at a site whose every earlier model latent site the guide also
    draws earlier. Where the model's p(z | z_2) depends on a z_2 that the guide draws after z,
    from it (a bottom-up hierarchy), the closed-form
    :math:`\mathrm{KL}(q(z|x) \,\|\, p(z|z_2))` at the sampled z_2 would average over z as if
    it were independent of z_2, a different quantity; the Monte Carlo term keeps them joint."""
    order = {name: i for i, (name, _) in enumerate(latent_sites(guide_trace))}
    earlier, kls = [], {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name not in order:
            continue
        if all(order[e] < order[name] for e in earlier):
            try:
                kls[name] = kl_divergence(guide_trace.nodes[name]["fn"], site["fn"])
            except NotImplementedError:
                pass
        earlier.append(name)
    return kls


@OBJECTIVES.register("stl")
class STL_ELBO(Objective):
    r"""The ELBO with the sticking-the-landing gradient (Roeder et al. 2017): the path channel alone,

    .. math:: \nabla_\phi \approx \frac1K \sum_k \partial_z \big[\log p(x, z) - \log q_{\bar\phi}(z|x)\big]_{z_k}
              \partial_\phi z_k,

    unbiased (the dropped score term has expectation zero) and exactly zero when q(z|x) is the
    posterior, where :math:`\log w` is constant in z. The model's parameters get the ELBO's gradient."""

    stops_parameters = True

    def reduce(self, model_trace, guide_trace):
        return -log_weights(model_trace, guide_trace, stopped_parameters).sum() / self.num_particles


@OBJECTIVES.register("iwae")
class IWAE_ELBO(Objective):
    r"""The importance-weighted bound of Burda et al. (RenyiELBO with alpha = 0), per datum,

    .. math:: \mathcal{L}_K(x) = \mathbb{E}\left[\log \frac{1}{K}\sum_{k=1}^K
              \frac{p(x, z_k)}{q(z_k|x)}\right], \quad z_k \sim q(z|x),

    summed over the data plate, whose dimension stays independent (the logsumexp runs over the
    particle dimension only), with its reparameterized gradient
    :math:`\sum_k \tilde w_k \nabla \log w_k`, whose signal-to-noise ratio for the guide falls like
    :math:`1/\sqrt K` (Rainforth et al. 2018)."""

    def reduce(self, model_trace, guide_trace):
        return -self.iwae_bound(self.particles(log_weights(model_trace, guide_trace)))


@OBJECTIVES.register("dreg")
class DReG_IWAE(IWAE_ELBO):
    r"""The IWAE bound with the doubly reparameterized gradient (Tucker et al. 2018): the model's
    parameters get IWAE's gradient, the guide's the path channel with squared weights,

    .. math:: \nabla_\phi \approx \sum_k \tilde w_k^2 \, \partial_z \big[\log p(x, z) -
              \log q_{\bar\phi}(z|x)\big]_{z_k} \partial_\phi z_k,

    unbiased for IWAE's gradient, with a guide signal-to-noise ratio that does not fall with K.
    The bound is taken over :math:`\log w` with q re-scored at detached parameters (its logsumexp
    weighs each particle by :math:`\tilde w_k`), and a hook on z multiplies the path by
    :math:`\tilde w_k` once more. With K = 1 it is :class:`STL_ELBO`."""

    stops_parameters = True

    def reduce(self, model_trace, guide_trace):
        log_w = self.particles(log_weights(model_trace, guide_trace, stopped_parameters))
        scale_latent_gradients(guide_trace, torch.softmax(log_w, dim=0))
        return -self.iwae_bound(log_w)


class GroupedBound(Objective):
    """Splits the ``num_particles`` samples into ``bounds`` groups of ``num_particles / bounds``."""

    def __init__(self, num_particles=1, max_plate_nesting=1, *, bounds=8):
        super().__init__(num_particles, max_plate_nesting)
        if bounds < 1 or num_particles % bounds:
            raise UserError(f"train.objective = {self.name} with bounds = {bounds} needs train.num_particles (here {num_particles}) "
                            "to be a positive multiple of bounds: the samples are split into bounds groups of equal size")
        self.bounds = bounds

    def grouped(self, log_w):
        """``(bounds, k, B)`` log weights, k = num_particles / bounds, and the mean over groups of
        their k-sample IWAE bounds, summed over the data."""
        groups = log_w.reshape(self.bounds, -1, log_w.shape[-1])
        k = groups.shape[1]
        return groups, (torch.logsumexp(groups, dim=1) - math.log(k)).mean(0).sum()


@OBJECTIVES.register("miwae")
class MIWAE_ELBO(GroupedBound):
    r"""MIWAE(M, k) (Rainforth et al. 2018): the mean of M = ``bounds`` IWAE bounds of k =
    ``num_particles`` / M samples each, :math:`\frac1M \sum_m \log \frac1k \sum_{j} w_{mj}`,
    with its reparameterized gradient. M = 1 is IWAE, k = 1 the K-particle ELBO."""

    def reduce(self, model_trace, guide_trace):
        return -self.grouped(self.particles(log_weights(model_trace, guide_trace)))[1]


@OBJECTIVES.register("piwae")
class PIWAE_ELBO(GroupedBound):
    r"""PIWAE(M, k) (Rainforth et al. 2018): on the same M x k samples, the model's parameters get
    the gradient of the IWAE bound of all K = M k samples, the guide's that of MIWAE(M, k):

    .. math:: \nabla_\theta \approx \sum_i \tilde w_i \nabla_\theta \log p_\theta(x, z_i), \qquad
              \nabla_\phi \approx \sum_i v_i \nabla_\phi \log w_i, \quad
              v_{mj} = \frac{w_{mj}}{M \sum_{j'} w_{mj'}}.

    "Model's parameters" means the model's density at fixed z (the decoder; a VampPrior's
    pseudo-inputs and the encoder inside it), "the guide's" the path through z and the guide's
    score: IWAE's logsumexp weighs every channel by :math:`\tilde w_i`, a hook on z turns the path's
    weight into :math:`v_i`, and the score channel, :math:`\log q_\phi(\bar z)`, enters with
    weight :math:`v_i` (zero value). The reported loss is the K-sample IWAE bound."""

    stops_parameters = True

    def reduce(self, model_trace, guide_trace):
        log_w = self.particles(log_weights(model_trace, guide_trace, stopped_parameters))
        groups, _ = self.grouped(log_w.detach())
        # v / w~ = sum_all w / (M sum_group w), from the group and the whole logsumexp
        ratio = (torch.logsumexp(log_w.detach(), 0) - torch.logsumexp(groups, 1) - math.log(self.bounds)).exp()
        scale_latent_gradients(guide_trace, ratio.unsqueeze(1).expand_as(groups).reshape(log_w.shape))
        v = torch.softmax(groups, dim=1).reshape(log_w.shape) / self.bounds
        score = 0.0
        for _, site in latent_sites(guide_trace):
            log_q = self.particles(stopped_value(site))
            score = score + (v * (log_q - log_q.detach())).sum()
        return score - self.iwae_bound(log_w)


@OBJECTIVES.register("ciwae")
class CIWAE_ELBO(Objective):
    r"""CIWAE(beta) (Rainforth et al. 2018): :math:`\beta\,\mathrm{ELBO} + (1 - \beta)\,\mathrm{IWAE}`
    over the same K samples, :math:`\frac\beta K \sum_k \log w_k + (1-\beta) \log\frac1K \sum_k w_k`,
    with its reparameterized gradient. beta = 1 is the K-particle ELBO, beta = 0 IWAE."""

    def __init__(self, num_particles=1, max_plate_nesting=1, *, beta=0.5):
        super().__init__(num_particles, max_plate_nesting)
        if not 0 <= beta <= 1:
            raise UserError(f"train.objective = ciwae needs beta in [0, 1], got {beta!r}")
        self.beta = float(beta)

    def reduce(self, model_trace, guide_trace):
        log_w = self.particles(log_weights(model_trace, guide_trace))
        return -(self.beta * log_w.sum() / self.num_particles + (1 - self.beta) * self.iwae_bound(log_w))


class LatentScale(Messenger):
    r"""Scales the log densities of the latent sites by ``beta``, in the model and the guide alike:

    .. math:: \mathbb{E}_q[\log p(x|z)] - \beta \, \mathrm{KL}(q(z|x) \,\|\, p(z)).

    Raising beta from 0 to 1 over the first epochs is KL warm-up (Bowman et al. 2016, Sønderby
    et al. 2016), which keeps learned priors (VampPrior, mixtures) from collapsing onto the
    posterior before the decoder has learned to use z. Observed sites are left alone.
    """

    def __init__(self, beta):
        super().__init__()
        self.beta = beta

    def _pyro_sample(self, msg):
        if not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.beta


def monte_carlo_kl_note(vae, x, y=None):
    """One line for the log when ``mean_field`` has no closed-form KL term for some latent site
    (a flow, a mixture or a VampPrior; the layers below the top of a stack): those terms are then
    estimated by Monte Carlo, exactly as ``elbo`` does; ``None`` when every one is closed-form."""
    with torch.no_grad(), vae.parameters_registered(False):
        guide_trace = prune_subsample_sites(poutine.trace(vae.guide).get_trace(x, y))
        model_trace = prune_subsample_sites(poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, y))
    kls = closed_form_kls(model_trace, guide_trace)
    sampled = [name for name, _ in latent_sites(guide_trace) if name not in kls]
    if not sampled:
        return None
    if sampled == ["z"] and len(vae.latent_sites) == 1:
        return (f"train.objective = mean_field: KL(q(z|x) || p(z)) has no closed form for the {vae.family.name} guide "
                f"and the {vae.prior.name} prior, so that term is a Monte Carlo estimate, as with train.objective = elbo")
    return (f"train.objective = mean_field: the KL terms of site(s) {', '.join(sampled)} have no closed form here (a layer below "
            "the top is conditioned on the layer above, which the guide draws from it; or the family and prior have no formula), "
            "so they are Monte Carlo estimates, as with train.objective = elbo")


# the objectives that can sum out an enumerated site (the semi-supervised model's unknown label)
ENUMERATION_OBJECTIVES = ("elbo", "mean_field")


def make_objective(spec, num_particles=1, enumerated=False):
    """The objective ``spec`` names (a registered name or ``{"type": name, **params}``, the value of
    ``train.objective``) over ``num_particles`` samples per datum.

    ``enumerated``: the guide has sites to sum out (the semi-supervised model's label); ``elbo``
    and ``mean_field`` are then both Pyro's ``TraceEnum_ELBO``, whose KL(q(z|x,y) || p(z)) is the
    Monte Carlo term (Pyro has no analytic-KL form of it); the others have no enumerated form."""
    cls, params = OBJECTIVES.resolve(spec, "train.objective")
    if not enumerated:
        return cls(num_particles, **params)
    if cls.name not in ENUMERATION_OBJECTIVES:
        raise UserError(f"train.objective = {cls.name!r} cannot sum out the semi-supervised model's unknown labels; "
                        f"choose one of: {', '.join(ENUMERATION_OBJECTIVES)} (or data.labelled = 0)")
    return TraceEnum_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)
