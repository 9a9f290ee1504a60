"""The training objectives named by ``train.objective``, each a Pyro ELBO over the VAE's
model and guide. All expose ``differentiable_loss`` so the trainer needs one code path.
"""

import math

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from torch.distributions import kl_divergence

from .config import ENUMERATION_OBJECTIVES
from .errors import UserError


def log_weights(model_trace, guide_trace):
    r"""The log importance weights :math:`\log p(x, z) - \log q(z|x)` of a guide trace and the model
    replayed against it: every sample site's ``log_prob`` summed over sites, never over the
    plates, so the result keeps the particle and data dimensions (shape ``(..., B)``). The IWAE
    objective and the log p(x) estimator both read their weights from here.
    """
    total = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] == "sample":
                total = total + sign * site["log_prob"]
    return total


def check_reparameterized(guide_trace):
    """The IWAE bound's gradient here is the pathwise one: a guide site without ``rsample`` would
    silently get a biased gradient, so it is refused, as Pyro's ``RenyiELBO`` refuses it."""
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not getattr(site["fn"], "has_rsample", False):
            raise UserError(
                f"the IWAE objective needs a reparameterized guide, but the guide's site '{name}' ({type(site['fn']).__name__}) "
                "has no rsample; use train.objective = \"elbo\" or a guide family with reparameterized samples"
            )


class IWAE_ELBO(RenyiELBO):
    r"""The importance-weighted bound of Burda et al. (RenyiELBO with alpha = 0), per datum:

    .. math:: \mathcal{L}_K(x) = \mathbb{E}\left[\log \frac{1}{K}\sum_{k=1}^K
              \frac{p(x, z_k)}{q(z_k|x)}\right], \quad z_k \sim q(z|x),

    summed over the data plate, whose dimension stays independent (the logsumexp runs over the
    particle dimension only). Pyro's ``RenyiELBO`` only offers ``loss_and_grads``; with a fully
    reparameterized guide the gradient of this quantity is exactly the one its surrogate gives,
    so a differentiable loss lets IWAE share the training step with ``Trace_ELBO``.
    """

    def __init__(self, num_particles, max_plate_nesting=1):
        super().__init__(alpha=0, num_particles=num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=True)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        (model_trace, guide_trace), = self._get_traces(model, guide, args, kwargs)
        check_reparameterized(guide_trace)
        # a particle plate of size 1 leaves no particle dimension on the sites
        log_w = log_weights(model_trace, guide_trace).reshape(self.num_particles, -1)
        return -(torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()


def sync_free_loss(objective, model, guide, *args):
    """``objective.differentiable_loss(model, guide, *args)`` as a pure tensor expression: the same
    traces (Pyro's particle vectorization included) and the same terms, but none of the per-site
    ``.item()`` calls with which Pyro's ``Trace_ELBO`` family reports its float loss. Those would
    synchronize with a GPU at every site and stop a graph capture; this sum can be traced.

    ``mean_field`` takes the closed-form KL between the guide's and the model's latent site where
    one is registered (the diagonal and full-rank guides against the normal and learned_normal
    priors), as ``TraceMeanField_ELBO`` does, and the Monte Carlo term otherwise (flows, mixture
    and VampPrior). The guide's sites are reparameterized, so
    their score-function terms are zero and their log-density is the whole surrogate.
    """
    if isinstance(objective, IWAE_ELBO):  # already a tensor expression
        return objective.differentiable_loss(model, guide, *args)
    if isinstance(objective, TraceEnum_ELBO):
        raise UserError("the sync-free loss cannot sum out enumerated sites; train a model with enumerated sites eager (train.compile = off)")
    ((model_trace, guide_trace),) = objective._get_traces(model, guide, args, {})
    check_summable(guide_trace)
    mean_field = isinstance(objective, TraceMeanField_ELBO)
    elbo = 0.0
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        guide_site = guide_trace.nodes.get(name)
        if mean_field and not site["is_observed"]:
            try:
                kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:
                pass
            else:
                elbo = elbo - scale_and_mask(kl, guide_site["scale"], guide_site["mask"]).sum()
                continue
        elbo = elbo + site["log_prob_sum"]
        if guide_site is not None and not site["is_observed"]:
            elbo = elbo - guide_site["log_prob_sum"]
    return -elbo / objective.num_particles


def check_summable(guide_trace):
    """The sync-free loss is the sum of the sites' log-densities: right for reparameterized sites
    only. An enumerated site would have its values added up instead of summed out, and a sampled
    discrete one would lose its score-function term; both are refused rather than trained wrong."""
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if site["infer"].get("enumerate") or not getattr(site["fn"], "has_rsample", False):
            raise UserError(
                f"the compiled step sums log-densities, which is wrong for the guide's site '{name}' "
                f"({'enumerated' if site['infer'].get('enumerate') else 'not reparameterized'}); train it eager (train.compile = off)"
            )


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
    """One line for the log when ``mean_field`` has no closed-form KL(q(z|x) || p(z)) for this
    guide family and prior (a flow, a mixture or a VampPrior): Pyro's ``TraceMeanField_ELBO`` then
    estimates that term by Monte Carlo, exactly as ``elbo`` does; ``None`` when it has one."""
    with torch.no_grad(), vae.parameters_registered(False):
        q = vae.posterior(x, y)
        try:
            kl_divergence(q, vae.prior_distribution().expand(q.batch_shape))
        except NotImplementedError:
            return (f"train.objective = mean_field: KL(q(z|x) || p(z)) has no closed form for the {vae.family.name} guide "
                    f"and the {vae.prior.name} prior, so that term is a Monte Carlo estimate, as with train.objective = elbo")
    return None


def make_objective(name, num_particles=1, enumerated=False):
    """``elbo`` -> Trace_ELBO, ``mean_field`` -> TraceMeanField_ELBO (analytic KL where it exists),
    ``iwae`` -> the importance-weighted bound with ``num_particles`` samples, vectorized.

    ``enumerated``: the guide has sites to sum out (the semi-supervised model's label); ``elbo``
    and ``mean_field`` are then both ``TraceEnum_ELBO``, whose KL(q(z|x,y) || p(z)) is the Monte
    Carlo term (Pyro has no analytic-KL form of it); ``iwae`` has no enumerated form."""
    if enumerated:
        if name not in ENUMERATION_OBJECTIVES:
            raise UserError(f"train.objective = {name!r} cannot sum out the semi-supervised model's unknown labels; "
                            f"choose one of: {', '.join(ENUMERATION_OBJECTIVES)} (or data.labelled = 0)")
        return TraceEnum_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)
    if name == "iwae":
        return IWAE_ELBO(num_particles)
    cls = {"elbo": Trace_ELBO, "mean_field": TraceMeanField_ELBO}[name]
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)
