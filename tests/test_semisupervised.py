"""The semi-supervised model (Kingma et al.'s M2): the enumerated bound against its sum over
classes written out by hand, the fully labelled case against the CVAE, the classifier on a toy
problem, log p(x) with y summed out against a model whose p(x, y) is known, and runs."""

import json
import math

import numpy as np
import pyro
import pytest
import torch

from helpers import assert_same_weights, small_config
from pyro_vae import VAE, config, data
from pyro_vae.cli import main
from pyro_vae.errors import UserError
from pyro_vae.marginal import estimate_log_px_summed
from pyro_vae.model import UNKNOWN
from pyro_vae.networks import call_net
from pyro_vae.noise import GivenNoise, from_standard_normal
from pyro_vae.objectives import make_objective
from pyro_vae.run import load_run, train_run
from pyro_vae.train import make_training_objective
from pyro_vae.semisupervised import SemiSupervisedELBO

C, D, LATENT = 4, 12, 3


def small_m2(**kwargs):
    torch.manual_seed(0)
    return VAE(input_dim=D, latent_dim=LATENT, encoder={"hidden": [8]}, decoder={"hidden": [8]}, num_classes=C,
               classifier={"hidden": [8]}, **kwargs)


def labelled_bound(vae, x, c, eps):
    """L(x, c) per datum, written out: log p(c) + log p(x | z, c) + log p(z) - log q(z | x, c), with
    z the posterior family's reparameterized sample from the standard-normal noise eps."""
    y = torch.full((len(x),), c)
    q = vae.posterior(x, y)
    z = from_standard_normal(q)[0](eps)
    log_px = vae.likelihood(call_net(vae.decoder, z, vae.onehot(y))).log_prob(x)
    return -math.log(C) + log_px + vae.prior_distribution().log_prob(z) - q.log_prob(z)


def enumerated_loss(vae, x, y, eps, objective="elbo"):
    """Pyro's TraceEnum_ELBO loss with the guide's z noise given: class c's z takes eps[c]."""
    elbo = make_objective(objective, enumerated=True)
    with pyro.validation_enabled(True), GivenNoise([eps]):
        return elbo.differentiable_loss(vae.model, vae.guide, x, y)


# each registered prior, likelihood and posterior family in turn, the others at their default
VARIANTS = [{}, {"prior": "learned_normal"}, {"prior": {"type": "mixture", "components": 3}},
            {"prior": {"type": "vamp", "components": 5}}, {"likelihood": "continuous_bernoulli"}, {"likelihood": "gaussian"},
            {"likelihood": "laplace"}, {"guide": "full_rank"}, {"guide": "iaf"}]


@pytest.mark.parametrize("objective", ["elbo", "mean_field"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(str(x.get("type", x) if isinstance(x, dict) else x) for x in v.values()) or "default")
def test_the_enumerated_bound_is_the_sum_over_classes_weighted_by_q_plus_its_entropy(objective, variant):
    vae = small_m2(**variant)
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


# -- the classifier learns; log p(x) sums over the classes exactly -------------------------------


def test_the_classifier_learns_a_separable_toy_problem_from_a_handful_of_labels():
    from pyro_vae import fit_tensors

    gen = torch.Generator().manual_seed(0)
    classes = torch.arange(160) % 2
    # class 0 lights the first half of the pixels, class 1 the second (each pixel on with p 0.9 there, 0.1 elsewhere)
    on = torch.where((torch.arange(D) < D // 2) == (classes[:, None] == 0), 0.9, 0.1)
    x = torch.bernoulli(on, generator=gen)
    y = torch.full((160,), UNKNOWN)
    y[:4] = classes[:4]  # two labels of each class; the other 156 images are unlabelled
    torch.manual_seed(0)
    vae = VAE(input_dim=D, latent_dim=2, encoder={"hidden": [16]}, decoder={"hidden": [16]}, num_classes=2, classifier={"hidden": [16]})
    before = (vae.classify(x[120:]).argmax(-1) == classes[120:]).double().mean()
    fit_tensors(vae, x[:120], y[:120], x_test=x[120:], y_test=classes[120:], overrides=["train.epochs=4", "train.batch_size=40",
                "train.lr=0.03", "train.objective=elbo", "train.supervised_weight=10.0"], progress=False)
    accuracy = (vae.classify(x[120:]).argmax(-1) == classes[120:]).double().mean()
    assert before < 0.9 and accuracy >= 0.95, (before, accuracy)


class KnownJoint(torch.nn.Module):
    """Networks of a VAE whose p(x, y) is known: the decoder ignores z (p(x | y, z) = p(x | y),
    a Bernoulli with logits ``table[y]``) and the encoder gives q(z|x, y) = p(z) = N(0, I), so every
    importance weight is exactly p(x | y) and log p(x, y) = log p(y) + log p(x | y)."""

    def __init__(self, table=None):
        super().__init__()
        self.table = table
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, h, y_onehot=None):
        if self.table is not None:  # decoder
            return (y_onehot @ self.table) + 0 * h.sum(-1, keepdim=True)
        lead = torch.broadcast_shapes(h.shape[:-1], y_onehot.shape[:-1])
        return torch.zeros(lead + (LATENT,)) + 0 * self.dummy, torch.ones(lead + (LATENT,))


def test_log_px_sums_over_the_classes_exactly():
    torch.manual_seed(0)
    table = torch.randn(C, D) * 2
    vae = VAE(input_dim=D, latent_dim=LATENT, encoder=KnownJoint(), decoder=KnownJoint(table), num_classes=C,
              classifier=torch.nn.Linear(D, C))
    x = torch.bernoulli(torch.full((7, D), 0.5))
    log_pxy = torch.stack([torch.distributions.Bernoulli(logits=table[c]).log_prob(x).sum(-1) for c in range(C)]) - math.log(C)
    result = estimate_log_px_summed(vae, x, num_samples=3, seed=0)
    exact = torch.logsumexp(log_pxy, 0).double()
    assert torch.allclose(result.log_px, exact, atol=1e-5)
    assert (result.log_px - log_pxy.max(0).values.double()).min() > 1e-3  # a sum, not the best class alone
    q_y = vae.classify(x).double().T
    assert torch.allclose(result.elbo, (q_y * log_pxy.double()).sum(0) - torch.special.xlogy(q_y, q_y).sum(0), atol=1e-5)


def test_a_conditional_vae_has_no_summed_log_px():
    cvae = VAE(input_dim=D, latent_dim=LATENT, encoder={"hidden": [8]}, decoder={"hidden": [8]}, num_classes=C)
    with pytest.raises(UserError, match="log p\\(x \\| y\\)"):
        estimate_log_px_summed(cvae, torch.zeros(2, D))


# -- the step: eager, and never a different objective when compiled ------------------------------


def test_the_semi_supervised_step_runs_eager_under_auto_and_refuses_on(capsys):
    from pyro_vae.step import Step
    from pyro_vae.train import make_training_objective

    vae = small_m2()
    t = config.load(None, ["model.conditional=true", "data.labelled=10"]).train
    lines = []
    step = Step(vae, make_training_objective(vae, t), dynamic_binarization=False, compile="auto", log=lines.append)
    assert not step.compiled and len(lines) == 1 and "enumeration" in lines[0] and "\n" not in lines[0]
    with pytest.raises(UserError, match="train.compile = on but the training step cannot be compiled: the label is summed out"):
        Step(vae, make_training_objective(vae, t), dynamic_binarization=False, compile="on")


@pytest.mark.filterwarnings("ignore:y:UserWarning")  # Pyro's note that Trace_ELBO does not enumerate: the point
def test_the_summing_objectives_refuse_the_label_site_and_the_compiled_step_refuses_enumeration():
    """The registered objectives sum the sites' log-densities: for the guide's discrete label that
    would drop its score-function term, so they refuse it; the enumerated objective has no
    tensor-only reduction, so the compiled step refuses it rather than training something else."""
    from pyro_vae.step import Step

    vae = small_m2()
    x = torch.bernoulli(torch.full((3, D), 0.4))
    with pytest.raises(UserError, match="'y'"):
        make_objective("elbo").differentiable_loss(vae.model, vae.guide, x, None)
    with pytest.raises(UserError, match="cannot be compiled"):
        Step(vae, make_training_objective(vae, config.load(None, []).train), dynamic_binarization=False, compile="on")


# -- runs ------------------------------------------------------------------------------------------


def m2_config(data_dir, *overrides):
    return small_config(data_dir, "model.conditional=true", "data.labelled=20", "data.limit=200", "data.test_limit=50",
                        "train.labelled_batch_size=10", "train.batch_size=50", *overrides)


@pytest.fixture(scope="module")
def m2_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("m2_run")
    train_run(m2_config(data_dir), out, progress=False)
    return out


def test_a_semi_supervised_run_resumes_bitwise(m2_run, data_dir, tmp_path):
    train_run(m2_config(data_dir, "train.epochs=1"), tmp_path / "resumed", progress=False)
    resumed, _ = train_run(m2_config(data_dir), tmp_path / "resumed", resume=True, progress=False)
    _, straight, _ = load_run(m2_run)
    assert_same_weights(straight, resumed)
    last = [(run / "metrics.csv").read_text().splitlines()[-1].split(",")[:4] for run in (m2_run, tmp_path / "resumed")]
    assert last[0] == last[1]  # epoch, step, train and test ELBO


def test_the_labelled_set_is_balanced_seeded_and_held_back(data_dir):
    ds = data.load_dataset(m2_config(data_dir, "data.labelled=23"))
    train = ds.train
    assert int(train.labelled.sum()) == 23
    counts = torch.bincount(train.y[train.labelled], minlength=10)
    assert counts.min() == 2 and counts.max() == 3
    assert torch.equal(train.observed_y == UNKNOWN, ~train.labelled)
    again = data.load_dataset(m2_config(data_dir, "data.labelled=23")).train.labelled
    other = data.load_dataset(m2_config(data_dir, "data.labelled=23", "seed=1")).train.labelled
    assert torch.equal(again, train.labelled) and not torch.equal(other, train.labelled)


def test_evaluate_on_an_m2_run_reports_log_px_summed_and_the_accuracy(m2_run, capsys):
    assert main(["evaluate", str(m2_run), "--num-samples", "3", "--limit", "20", "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["quantity"] == "log p(x)" and 0 <= summary["accuracy"] <= 1 and summary["log_px"] < 0
    assert "log p(x), y summed out" in out and "classifier q(y|x) accuracy" in out


def test_generate_digit_and_encode_y_probs_on_an_m2_run(m2_run, tmp_path):
    assert main(["generate", str(m2_run), "--digit", "7", "--n", "3", "--out", str(tmp_path / "s.npz")]) == 0
    assert np.load(tmp_path / "s.npz")["labels"].tolist() == [7, 7, 7]
    assert main(["encode", str(m2_run), "--limit", "12", "--out", str(tmp_path / "e.npz")]) == 0
    arrays = np.load(tmp_path / "e.npz")
    assert arrays["y_probs"].shape == (12, 10) and arrays["y_probs"].dtype == np.float32
    assert np.allclose(arrays["y_probs"].sum(1), 1, atol=1e-5)


def test_evaluate_says_a_cvae_reports_log_p_x_given_y(trained_cvae_run, capsys):
    assert main(["evaluate", str(trained_cvae_run), "--num-samples", "2", "--limit", "5", "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["quantity"] == "log p(x | y)" and "accuracy" not in summary and "log p(x | y), y = true test label" in out
