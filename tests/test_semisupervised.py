"""The semi-supervised model (Kingma et al.'s M2): the enumerated bound against its sum over
classes written out by hand, the fully labelled case against the CVAE, the classifier on a toy
problem, log p(x) with y summed out against a model whose p(x, y) is known, and runs."""

import math

import numpy as np
import pyro
import pytest
import torch

from pyro_vae import VAE, data
from pyro_vae.marginal import estimate_log_px_summed
from pyro_vae.model import UNKNOWN
from pyro_vae.noise import GivenNoise
from pyro_vae.objectives import make_objective
from pyro_vae.semisupervised import SemiSupervisedELBO

C, D, LATENT = 4, 12, 3


def small_m2(**kwargs):
    torch.manual_seed(0)
    return VAE(input_dim=D, latent_dim=LATENT, encoder={"hidden": [8]}, decoder={"hidden": [8]}, num_classes=C,
               classifier={"hidden": [8]}, **kwargs)


def labelled_bound(vae, x, c, eps):
    """L(x, c) per datum, written out: log p(c) + log p(x | z, c) + log p(z) - log q(z | x, c), z = loc + scale * eps."""
    y = torch.full((len(x),), c)
    q = vae.posterior(x, y)
    z = q.base_dist.loc + q.base_dist.scale * eps
    log_px = vae.likelihood(vae.decoder(z, vae.onehot(y))).log_prob(x)
    return -math.log(C) + log_px + vae.prior_distribution().log_prob(z) - q.log_prob(z)


def enumerated_loss(vae, x, y, eps, objective="elbo"):
    """Pyro's TraceEnum_ELBO loss with the guide's z noise given: class c's z takes eps[c]."""
    elbo = make_objective(objective, enumerated=True)
    with pyro.validation_enabled(True), GivenNoise([eps]):
        return elbo.differentiable_loss(vae.model, vae.guide, x, y)


@pytest.mark.parametrize("objective", ["elbo", "mean_field"])
def test_the_enumerated_bound_is_the_sum_over_classes_weighted_by_q_plus_its_entropy(objective):
    vae = small_m2()
    x = torch.bernoulli(torch.full((5, D), 0.4))
    eps = torch.randn(C, 5, LATENT)
    q_y = vae.classifier(x).softmax(-1)
    by_hand = sum(q_y[:, c] * labelled_bound(vae, x, c, eps[c]) for c in range(C)) - (q_y * q_y.log()).sum(-1)
    assert torch.allclose(enumerated_loss(vae, x, None, eps, objective), -by_hand.sum(), rtol=1e-5)
    # and the gradients: the classifier's through q(y|x), the networks' through every class
    grads = torch.autograd.grad(enumerated_loss(vae, x, None, eps, objective), list(vae.parameters()))
    expected = torch.autograd.grad(-by_hand.sum(), list(vae.parameters()))
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-6)


def test_known_labels_keep_only_their_class_and_unknown_ones_sum_over_all():
    vae = small_m2()
    x = torch.bernoulli(torch.full((5, D), 0.4))
    y = torch.tensor([2, UNKNOWN, 0, UNKNOWN, 3])
    eps = torch.randn(C, 5, LATENT)
    q_y = vae.classifier(x).softmax(-1)
    unlabelled = sum(q_y[:, c] * labelled_bound(vae, x, c, eps[c]) for c in range(C)) - (q_y * q_y.log()).sum(-1)
    labelled = torch.stack([labelled_bound(vae, x[i : i + 1], max(int(y[i]), 0), eps[max(int(y[i]), 0), i : i + 1])[0] for i in range(5)])
    by_hand = torch.where(y == UNKNOWN, unlabelled, labelled)
    assert torch.allclose(enumerated_loss(vae, x, y, eps), -by_hand.sum(), rtol=1e-5)


def test_with_every_label_observed_the_loss_is_the_cvaes_plus_log_p_y_and_the_supervised_gradient():
    m2 = small_m2()
    torch.manual_seed(0)
    cvae = VAE(input_dim=D, latent_dim=LATENT, encoder={"hidden": [8]}, decoder={"hidden": [8]}, num_classes=C)
    assert set(m2.state_dict()) == set(cvae.state_dict()) | {k for k in m2.state_dict() if k.startswith("classifier.")}
    cvae.load_state_dict({k: v for k, v in m2.state_dict().items() if not k.startswith("classifier.")})
    x = torch.bernoulli(torch.full((6, D), 0.4))
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    eps = torch.randn(6, LATENT)
    alpha = 7.0
    m2_objective = SemiSupervisedELBO(make_objective("elbo", enumerated=True), m2, alpha)
    with GivenNoise([eps.expand(C, 6, LATENT)]):  # every enumerated class draws the same z noise; only the true one counts
        m2_loss = m2_objective.differentiable_loss(m2.model, m2.guide, x, y)
    with GivenNoise([eps]):
        cvae_loss = make_objective("elbo").differentiable_loss(cvae.model, cvae.guide, x, y)
    # the value: today's CVAE loss (a bound on log p(x | y)) less log p(y) = -log C per datum
    assert torch.allclose(m2_loss, cvae_loss + 6 * math.log(C), rtol=1e-6)
    # the gradient: the CVAE's for the shared networks, plus alpha times the cross-entropy's for the classifier
    cross_entropy = torch.nn.functional.cross_entropy(m2.classifier(x), y, reduction="sum")
    m2_grads = dict(zip(dict(m2.named_parameters()), torch.autograd.grad(m2_loss, list(m2.parameters()))))
    cvae_grads = dict(zip(dict(cvae.named_parameters()), torch.autograd.grad(cvae_loss, list(cvae.parameters()))))
    ce_grads = dict(zip([n for n, _ in m2.classifier.named_parameters()], torch.autograd.grad(cross_entropy, list(m2.classifier.parameters()))))
    for name, g in m2_grads.items():
        expected = alpha * ce_grads[name.removeprefix("classifier.")] if name.startswith("classifier.") else cvae_grads[name]
        assert torch.allclose(g, expected, rtol=1e-5, atol=1e-6), name
