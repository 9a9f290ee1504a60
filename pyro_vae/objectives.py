"""The training objectives named by ``train.objective``, each a Pyro ELBO over the VAE's
model and guide. All expose ``differentiable_loss`` so the trainer needs one code path.
"""

import math

import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.poutine.messenger import Messenger


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
        sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
        log_w = 0.0
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for site in trace.nodes.values():
                if site["type"] == "sample":
                    log_w = log_w + sign * torch_sum(site["log_prob"], sum_dims)
        # a particle plate of size 1 leaves no particle dimension on the sites
        log_w = log_w.reshape(self.num_particles, -1)
        return -(torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()


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


def make_objective(name, num_particles=1):
    """``elbo`` -> Trace_ELBO, ``mean_field`` -> TraceMeanField_ELBO (analytic KL where it exists),
    ``iwae`` -> the importance-weighted bound with ``num_particles`` samples, vectorized."""
    if name == "iwae":
        return IWAE_ELBO(num_particles)
    cls = {"elbo": Trace_ELBO, "mean_field": TraceMeanField_ELBO}[name]
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)
