r"""The semi-supervised objective (Kingma et al. 2014, "Semi-supervised learning with deep
generative models", model M2), over the VAE's own Pyro programs.

For a labelled image the bound is on log p(x, y); for an unlabelled one the label is summed out::

    L(x, y) = E_{q(z|x,y)}[log p(x | y, z) + log p(y) + log p(z) - log q(z | x, y)]  <= log p(x, y)
    U(x)    = sum_y q(y|x) L(x, y) + H(q(y|x))                                      <= log p(x)

Both come from one ``TraceEnum_ELBO`` over :meth:`VAE.model` and :meth:`VAE.guide`: the guide's
label site is enumerated in parallel (all C classes at once, along a dimension left of the data
plate), and a known label's site is a point mass, so the same sum keeps only its true class.
Neither term trains the classifier from the labels (U(x) trains it only through the unlabelled
images), so Kingma et al. add the supervised term alpha * E[-log q(y|x)] over the labelled
images; here each known label's -log q(y|x) is weighted by ``train.supervised_weight``::

    loss = -sum_{unlabelled} U(x) - sum_{labelled} L(x, y) + alpha * sum_{labelled} -log q(y|x)

The loss's *value* is the negative bound alone (what ``train_elbo`` reports); the supervised
term enters only its gradient (``t - t.detach()``), so the reported figure stays an ELBO.
"""

from pyro.infer import Trace_ELBO

EAGER_REASON = ("the label is summed out by Pyro's enumeration (TraceEnum_ELBO), whose contraction reads tensor "
                "values in Python, so the semi-supervised step has no static graph")


def _no_latents(x, y):
    """The supervised term's guide: its program has no latent site."""


class SemiSupervisedELBO:
    """``elbo`` (a ``TraceEnum_ELBO``) over the model and guide, plus ``alpha`` times the
    classifier's cross-entropy on the known labels in the gradient (see the module docstring).
    Labels are class indices with ``-1`` for an unknown one, as :class:`pyro_vae.VAE` takes them."""

    eager_reason = EAGER_REASON

    def __init__(self, elbo, vae, alpha):
        self.elbo, self.vae, self.alpha = elbo, vae, alpha
        self.num_particles = elbo.num_particles
        self.supervised = Trace_ELBO()

    def differentiable_loss(self, model, guide, x, y=None):
        loss = self.elbo.differentiable_loss(model, guide, x, y)
        if y is None or not self.alpha:
            return loss
        cross_entropy = self.supervised.differentiable_loss(self.vae.classifier_model, _no_latents, x, y)
        return loss + self.alpha * (cross_entropy - cross_entropy.detach())
