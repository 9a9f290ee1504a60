"""The VAE as a Pyro program: sites, plates, inference algorithms, parameter isolation."""

import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import LIKELIHOODS, PRIORS, VAE, UserError, register_likelihood, register_prior
from pyro_vae.likelihoods import Likelihood
from pyro_vae.objectives import IWAE_ELBO, make_objective

SMALL = {"type": "mlp", "hidden": [32], "activation": "tanh"}


def small_vae(**kwargs):
    kwargs.setdefault("input_dim", 20)
    kwargs.setdefault("latent_dim", 3)
    return VAE(encoder=SMALL, decoder=SMALL, **kwargs)


def binary_data(n=16, d=20):
    return torch.bernoulli(torch.full((n, d), 0.3))


def test_sites_and_plates_follow_the_contract():
    vae, x = small_vae(), binary_data(8)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    z, obs = model_trace.nodes["z"], model_trace.nodes["x"]
    assert z["value"].shape == (8, 3) and z["fn"].event_dim == 1
    assert obs["is_observed"] and obs["fn"].event_dim == 1 and obs["fn"].batch_shape == (8,)
    for site in (z, obs, guide_trace.nodes["z"]):
        assert [frame.name for frame in site["cond_indep_stack"]] == ["data"]
    assert torch.equal(z["value"], guide_trace.nodes["z"]["value"])
    params = {name for name, site in model_trace.nodes.items() if site["type"] == "param"}
    assert params == {f"{vae.pyro_name}$$${name}" for name, _ in vae.named_parameters()}


@pytest.mark.parametrize("elbo", [Trace_ELBO(), TraceMeanField_ELBO(), RenyiELBO(alpha=0, num_particles=4, vectorize_particles=True, max_plate_nesting=1)])
def test_plain_svi_with_pyro_optim_improves_the_elbo(elbo):
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae, x = small_vae(), binary_data(64)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    first = sum(svi.evaluate_loss(x) for _ in range(20)) / 20
    for _ in range(200):
        svi.step(x)
    last = sum(svi.evaluate_loss(x) for _ in range(20)) / 20
    assert last < first - 50  # summed over 64 data: about a nat per datum at least


def test_predictive_draws_from_guide_and_model():
    vae, x = small_vae(), binary_data(5)
    samples = Predictive(vae.model, guide=vae.guide, num_samples=7, return_sites=["z", "x"])(x)
    assert samples["z"].shape == (7, 5, 3)
    assert torch.equal(samples["x"], x.expand(7, 5, 20))


def test_two_vaes_never_share_parameters():
    pyro.clear_param_store()
    torch.manual_seed(0)
    first, second = small_vae(), small_vae()
    x = binary_data(32)
    for vae in (first, second):
        before = [p.detach().clone() for p in vae.parameters()]
        other = second if vae is first else first
        other_before = [p.detach().clone() for p in other.parameters()]
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        for _ in range(5):
            svi.step(x)
        assert all(not torch.equal(b, p) for b, p in zip(before, vae.parameters())), "a VAE did not train"
        assert all(torch.equal(b, p) for b, p in zip(other_before, other.parameters())), "training one VAE moved the other"
    assert first.pyro_name != second.pyro_name


def test_registration_off_gives_the_same_loss_without_param_sites():
    vae, x = small_vae(), binary_data(8)
    with vae.parameters_registered(False):
        trace = poutine.trace(vae.guide).get_trace(x)
    assert not any(site["type"] == "param" for site in trace.nodes.values())
    assert vae.register_params
    torch.manual_seed(1)
    on = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    torch.manual_seed(1)
    with vae.parameters_registered(False):
        off = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert torch.equal(on, off)


def test_iwae_with_one_particle_is_the_elbo():
    vae, x = small_vae(), binary_data(8)
    torch.manual_seed(3)
    iwae = IWAE_ELBO(num_particles=1).differentiable_loss(vae.model, vae.guide, x)
    torch.manual_seed(3)
    elbo = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert torch.allclose(iwae, elbo, rtol=1e-6)


def test_iwae_gradient_matches_pyros_renyi_elbo():
    vae, x = small_vae(), binary_data(8)
    torch.manual_seed(4)
    IWAE_ELBO(num_particles=5).differentiable_loss(vae.model, vae.guide, x).backward()
    ours = [p.grad.clone() for p in vae.parameters()]
    vae.zero_grad()
    torch.manual_seed(4)
    RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1).loss_and_grads(vae.model, vae.guide, x)
    for mine, pyros in zip(ours, (p.grad for p in vae.parameters())):
        assert torch.allclose(mine, pyros, rtol=1e-4, atol=1e-5)


def test_iwae_bound_is_tighter_than_the_elbo_on_average():
    vae, x = small_vae(), binary_data(64)
    with torch.no_grad():
        elbo = sum(make_objective("elbo").differentiable_loss(vae.model, vae.guide, x) for _ in range(20)) / 20
        iwae = sum(make_objective("iwae", 50).differentiable_loss(vae.model, vae.guide, x) for _ in range(20)) / 20
    assert iwae < elbo  # losses: the IWAE loss is minus a larger bound


def data_for(likelihood):
    name = likelihood if isinstance(likelihood, str) else likelihood["type"]
    x = torch.rand(64, 20)
    return torch.bernoulli(x) if name == "bernoulli" else x


LIKELIHOOD_SPECS = [
    "bernoulli",
    "continuous_bernoulli",
    {"type": "gaussian", "scale": 0.5},
    "gaussian",
    {"type": "laplace", "scale": 0.2},
    "laplace",
]


@pytest.mark.parametrize("prior", PRIORS.names())
@pytest.mark.parametrize("likelihood", LIKELIHOOD_SPECS, ids=str)
@pytest.mark.parametrize("objective", ["elbo", "mean_field", "iwae"])
def test_every_prior_likelihood_and_objective_trains(prior, likelihood, objective):
    torch.manual_seed(0)
    prior_spec = {"type": prior, "components": 5} if prior in ("mixture", "vamp") else prior
    vae, x = small_vae(prior=prior_spec, likelihood=likelihood), data_for(likelihood)
    loss_fn = make_objective(objective, 3 if objective == "iwae" else 1).differentiable_loss
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in vae.parameters()]
    losses = []
    with pyro.validation_enabled(True):
        for _ in range(50):
            loss = loss_fn(vae.model, vae.guide, x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) < sum(losses[:10])
    assert all(not torch.equal(b, p) for b, p in zip(before, vae.parameters()))


def test_learned_priors_and_scales_are_parameters():
    vae = small_vae(prior="mixture", likelihood="gaussian")
    names = {name for name, _ in vae.named_parameters()}
    assert {"prior.logits", "prior.loc", "prior.log_scale", "likelihood.log_scale"} <= names
    fixed = small_vae(prior="normal", likelihood={"type": "gaussian", "scale": 0.5})
    assert not any(name.startswith(("prior.", "likelihood.")) for name, _ in fixed.named_parameters())


def test_vamp_prior_is_the_encoder_posterior_mixture():
    vae = small_vae(prior={"type": "vamp", "components": 4})
    p = vae.prior(vae.encoder)
    z = torch.randn(6, 3)
    loc, scale = vae.encoder(vae.prior.images())
    by_hand = torch.logsumexp(dist.Normal(loc, scale).to_event(1).log_prob(z.unsqueeze(1)), dim=1) - torch.log(torch.tensor(4.0))
    assert torch.allclose(p.log_prob(z), by_hand, atol=1e-5)


def test_fixed_gaussian_scale_gives_squared_error():
    vae = small_vae(likelihood={"type": "gaussian", "scale": 0.5})
    out, x = torch.randn(4, 20), torch.rand(4, 20)
    expected = -((x - out) ** 2).sum(-1) / (2 * 0.25) - 20 * torch.log(torch.tensor(0.5 * (2 * torch.pi) ** 0.5))
    assert torch.allclose(vae.likelihood(out).log_prob(x), expected, atol=1e-4)
    assert torch.equal(vae.likelihood.mean(out), out)


def test_a_registered_prior_is_used_by_name_without_touching_the_model():
    @register_prior("wide_normal_for_test")
    class WideNormal(torch.nn.Module):
        def __init__(self, latent_dim, input_dim, num_classes=None, *, width=3.0):
            super().__init__()
            self.register_buffer("loc", torch.zeros(latent_dim))
            self.width = width

        def forward(self, encoder):
            return dist.Normal(self.loc, self.width).to_event(1)

    vae = small_vae(prior={"type": "wide_normal_for_test", "width": 5.0})
    trace = poutine.trace(vae.model).get_trace(binary_data(4))
    assert torch.allclose(trace.nodes["z"]["fn"].base_dist.scale, torch.tensor(5.0))


@pytest.mark.parametrize("support, data, words", [("binary", 0.5, "needs binary pixels"), ("unit", 2.0, "needs pixels in [0, 1]")])
def test_a_likelihood_registered_through_the_public_decorator_checks_its_support_by_name(support, data, words):
    @register_likelihood(f"{support}_for_test")
    class Mine(Likelihood):
        def __init__(self, input_dim):
            super().__init__()

        def forward(self, out):
            return dist.Bernoulli(logits=out).to_event(1)

    Mine.support = support
    vae = small_vae(likelihood=f"{support}_for_test")
    with pytest.raises(UserError, match=rf"likelihood '{support}_for_test' {re.escape(words)}"):
        vae.likelihood.check(torch.full((2, 20), data))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"prior": "cauchy"}, "unknown prior 'cauchy'"),
        ({"likelihood": "poisson"}, "unknown likelihood 'poisson'"),
        ({"prior": {"type": "mixture", "k": 3}}, "valid parameters: components"),
        ({"likelihood": {"type": "gaussian", "scale": -1.0}}, "positive number"),
        ({"latent_dim": 0}, "at least 1"),
    ],
)
def test_bad_model_arguments_are_user_errors(kwargs, words):
    with pytest.raises(UserError, match=words):
        small_vae(**kwargs)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UserError) as info:
        small_vae(prior="cauchy")
    assert all(name in str(info.value) for name in ("normal", "learned_normal", "mixture", "vamp"))
    with pytest.raises(UserError) as info:
        small_vae(likelihood="poisson")
    assert all(name in str(info.value) for name in LIKELIHOODS.names())


def test_bernoulli_refuses_grey_pixels_with_advice():
    vae = small_vae()
    with pytest.raises(UserError, match="binarize"):
        vae.likelihood.check(torch.rand(4, 20))
    vae.likelihood.check(binary_data(4))


def test_nn_module_encoder_and_decoder_are_accepted():
    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(20, 6)

        def forward(self, x, y_onehot=None):
            loc, log_scale = self.lin(x).chunk(2, -1)
            return loc, log_scale.exp()

    decoder = torch.nn.Linear(3, 20)
    vae = VAE(input_dim=20, latent_dim=3, encoder=Encoder(), decoder=lambda_free(decoder))
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, binary_data(4))
    loss.backward()
    assert vae.encoder.lin.weight.grad is not None and decoder.weight.grad is not None


def lambda_free(linear):
    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = linear

        def forward(self, z, y_onehot=None):
            return self.linear(z)

    return Decoder()


def test_sample_is_reproducible_with_a_seed_and_in_range():
    vae = small_vae()
    pyro.set_rng_seed(5)
    a = vae.sample(10)
    pyro.set_rng_seed(5)
    b = vae.sample(10)
    assert torch.equal(a, b) and a.shape == (10, 20) and 0 <= a.min() and a.max() <= 1


def test_bernoulli_pixels_score_like_independent_bernoullis_also_when_broadcast():
    vae = small_vae()
    logits, x = torch.randn(3, 5, 20), binary_data(5)
    ours = vae.likelihood(logits)
    reference = dist.Bernoulli(logits=logits).to_event(1)
    assert torch.allclose(ours.log_prob(x), reference.log_prob(x), atol=1e-5)
    expanded = ours.expand((4, 3, 5))
    assert type(expanded) is type(ours) and torch.allclose(expanded.log_prob(x), reference.expand((4, 3, 5)).log_prob(x), atol=1e-5)


def test_vamp_prior_works_with_a_single_argument_encoder():
    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(20, 6)

        def forward(self, x):
            loc, log_scale = self.lin(x).chunk(2, -1)
            return loc, log_scale.exp()

    vae = VAE(input_dim=20, latent_dim=3, prior={"type": "vamp", "components": 4}, encoder=Encoder(), decoder=SMALL)
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, binary_data(4))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("prior", ["normal", "vamp"])
def test_latent_scale_weights_the_kl_term_linearly(prior):
    from pyro_vae.noise import StepNoise
    from pyro_vae.objectives import LatentScale

    vae, x = small_vae(prior={"type": prior, "components": 3} if prior == "vamp" else prior), binary_data(8)

    def loss(beta):
        with StepNoise(0, 7, 8, slice(0, 8), "cpu"), LatentScale(beta):
            return Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).item()

    with StepNoise(0, 7, 8, slice(0, 8), "cpu"):
        guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    reconstruction = model.nodes["x"]["fn"].log_prob(x).sum().item()
    assert loss(0.0) == pytest.approx(-reconstruction, rel=1e-6)  # beta = 0: no KL term at all
    assert loss(0.5) == pytest.approx((loss(0.0) + loss(1.0)) / 2, rel=1e-6)
    assert loss(1.0) == pytest.approx(Trace_ELBO().differentiable_loss(
        poutine.replay(vae.model, trace=guide), poutine.replay(vae.guide, trace=guide), x).item(), rel=1e-6)
