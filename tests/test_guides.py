"""Posterior families q(z|x): each family's density of its own samples against an independent
computation, the linear-Gaussian model whose exact posterior only the full-rank family can
represent, and every family with every prior, likelihood and objective."""

import importlib.util
import math
from pathlib import Path

import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms import conditional_planar
from pyro.infer import Predictive
from torch import nn

from helpers import assert_same_weights, small_config
from pyro_vae import GUIDES, VAE, UserError, noise, register_guide
from pyro_vae.guides import split_encoded
from pyro_vae.marginal import estimate_log_px
from pyro_vae.noise import from_standard_normal
from pyro_vae.objectives import make_objective, monte_carlo_kl_note
from pyro_vae.run import build_vae, fit_tensors, load_run, train_run
from pyro_vae.step import Step

IAF = {"type": "iaf", "flows": 3, "hidden": [16, 16], "context": 5}
FAMILIES = ["diagonal", "full_rank", IAF]
PRIORS = ["normal", "learned_normal", {"type": "mixture", "components": 3}, {"type": "vamp", "components": 4}]
LIKELIHOODS = ["bernoulli", "continuous_bernoulli", {"type": "gaussian", "scale": 0.5}, "gaussian", "laplace"]


def perturbed(vae):
    """A VAE whose encoder's extra outputs and flows' outputs are not zero: both start at zero
    (full rank starts diagonal, a flow as a uniform shrink), which would make a test of the
    off-diagonal part or of the flow's Jacobian vacuous. Masked weights stay masked."""
    with torch.no_grad():
        vae.encoder.net[-1].weight.normal_(0, 0.5)
        vae.encoder.net[-1].bias.normal_(0, 0.5)
        for p in vae.family.parameters():
            p.normal_(0, 0.3)
    return vae


def test_a_built_in_encoder_starts_the_extra_outputs_at_zero_so_full_rank_starts_diagonal():
    torch.manual_seed(0)
    x = torch.rand(6, 12)
    for family in ("full_rank", IAF):
        vae = VAE(12, 4, guide=family, encoder={"hidden": [8]})
        loc, scale, extra = vae.encoder(x)
        assert extra.shape == (6, vae.family.extra_outputs) and torch.all(extra == 0)
        if family == "full_rank":
            assert torch.allclose(vae.posterior(x).covariance_matrix, torch.diag_embed(scale**2))


def test_full_rank_log_q_is_the_gaussian_density_with_the_full_covariance():
    torch.manual_seed(0)
    d = 4
    vae = perturbed(VAE(12, d, guide={"type": "full_rank", "off_diagonal_scale": 0.5}, encoder={"hidden": [8]}).double())
    x = torch.rand(5, 12, dtype=torch.float64)
    q = vae.posterior(x)
    z = q.rsample((7,))
    loc, scale, below = vae.encoder(x)
    # L = diag(scale) (I + B): the extra outputs, halved, fill B's strict lower triangle row by row
    tril = torch.zeros(5, d, d, dtype=torch.float64)
    k = 0
    for i in range(d):
        tril[:, i, i] = scale[:, i]
        for j in range(i):
            tril[:, i, j] = scale[:, i] * 0.5 * below[:, k]
            k += 1
    cov = tril @ tril.transpose(-1, -2)
    assert not torch.allclose(cov, torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1)))  # correlated
    r = z - loc
    mahalanobis = (r.unsqueeze(-2) @ torch.linalg.solve(cov, r.unsqueeze(-1))).squeeze((-2, -1))
    expected = -0.5 * (d * math.log(2 * math.pi) + torch.linalg.slogdet(cov)[1] + mahalanobis)
    assert torch.allclose(q.log_prob(z), expected, rtol=0, atol=1e-10)
    mean, std = vae.family.moments(vae.encoder(x))
    assert torch.allclose(mean, loc) and torch.allclose(std, torch.diagonal(cov, dim1=-2, dim2=-1).sqrt())


@pytest.mark.parametrize("stable", [False, True], ids=["affine", "gated"])
def test_iaf_log_q_is_the_change_of_variables_sum(stable):
    """log q(z_T) = log N(z_0; loc, scale) - log |det dz_T/dz_0|, the Jacobian's determinant taken
    by autograd over the whole map (no use of its triangular structure)."""
    torch.manual_seed(0)
    d = 4
    vae = perturbed(VAE(12, d, guide={**IAF, "stable": stable}, encoder={"hidden": [8]}).double())
    x = torch.rand(5, 12, dtype=torch.float64)
    q = vae.posterior(x)
    loc, scale, context = vae.encoder(x)
    eps = torch.randn(5, d, dtype=torch.float64)

    def flow(z0):  # one datum's z_0 -> z_T, step by step as the module docstring writes it
        for t in transforms:
            mean, raw = t.arn(z0.unsqueeze(0))
            if stable:
                s = torch.sigmoid(raw + 2.0)
                z0 = (s * z0 + (1 - s) * mean).squeeze(0)
            else:
                z0 = (mean + raw.clamp(-5.0, 3.0).exp() * z0).squeeze(0)
        return z0

    for i in range(5):
        transforms = [f.condition(context[i : i + 1]) for f in vae.family.flows]
        z0 = loc[i] + scale[i] * eps[i]
        log_det = torch.linalg.slogdet(torch.autograd.functional.jacobian(flow, z0))[1]
        expected = dist.Normal(loc[i], scale[i]).log_prob(z0).sum() - log_det
        # the sample as the training step draws it (the transforms cache their inputs) ...
        z, _ = from_standard_normal(q)
        z_t = z(eps)
        assert torch.allclose(z_t[i], flow(z0), atol=1e-12)
        assert q.log_prob(z_t)[i].item() == pytest.approx(expected.item(), abs=1e-9)
        # ... and a z given from outside, which the flow must invert
        assert vae.posterior(x).log_prob(z_t.clone())[i].item() == pytest.approx(expected.item(), abs=1e-8)


def test_an_affine_iaf_starts_as_the_identity_on_its_diagonal_gaussian():
    torch.manual_seed(0)
    vae = VAE(12, 4, guide=IAF, encoder={"hidden": [8]})
    x = torch.rand(6, 12)
    loc, scale, _ = vae.encoder(x)
    q, z = vae.posterior(x), torch.randn(3, 6, 4)
    assert torch.allclose(q.log_prob(z), dist.Normal(loc, scale).to_event(1).log_prob(z), atol=1e-5)


def test_the_registered_kl_of_full_rank_against_a_gaussian_prior_is_torchs_mvn_kl():
    torch.manual_seed(0)
    vae = perturbed(VAE(12, 4, guide="full_rank", prior="learned_normal", encoder={"hidden": [8]}).double())
    with torch.no_grad():
        vae.prior.loc.normal_()
        vae.prior.log_scale.normal_(0, 0.3)
    q = vae.posterior(torch.rand(5, 12, dtype=torch.float64))
    p = vae.prior_distribution()
    as_mvn = dist.MultivariateNormal(p.base_dist.loc, scale_tril=torch.diag(p.base_dist.scale))
    kl = torch.distributions.kl_divergence(q, p.expand(q.batch_shape))
    assert torch.allclose(kl, torch.distributions.kl_divergence(q, as_mvn), atol=1e-10)


def linear_gaussian(sigma=0.5, w=((1.0, 1.0), (1.0, 1.2), (0.8, 1.0), (1.0, 0.9))):
    """z ~ N(0, I_2), x ~ N(W z + b, sigma^2 I_4): p(x) = N(b, W W^T + sigma^2 I) and the posterior
    N(S W^T (x - b) / sigma^2, S), S = (I + W^T W / sigma^2)^-1, correlated (about -0.93) by the
    default W."""
    w = torch.tensor(w, dtype=torch.float64)
    b = torch.tensor([0.5, -0.3, 0.1, 0.2], dtype=torch.float64)
    decoder = nn.Linear(2, 4).double()
    with torch.no_grad():
        decoder.weight.copy_(w)
        decoder.bias.copy_(b)
    decoder.requires_grad_(False)
    evidence = dist.MultivariateNormal(b, covariance_matrix=w @ w.T + sigma**2 * torch.eye(4, dtype=torch.float64))
    posterior_cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + w.T @ w / sigma**2)
    return decoder, evidence, posterior_cov


def linear_gaussian_vae(decoder, guide="diagonal"):
    """A VAE with the linear-Gaussian model's decoder and likelihood and a linear encoder."""
    vae = VAE(4, 2, likelihood={"type": "gaussian", "scale": 0.5}, encoder={"hidden": []}, decoder=decoder, guide=guide).double()
    vae.pending_data_init = False
    return vae


def fitted_linear_gaussian_vae(guide, **model):
    """The guide of a VAE with the linear-Gaussian decoder, fitted with a linear encoder (the exact
    posterior's mean is linear in x, its covariance constant), in float64, by L-BFGS on the ELBO
    with its closed-form KL: the same seeded draws at every evaluation make the Monte Carlo term a
    fixed function, which L-BFGS can minimize to convergence."""
    torch.manual_seed(0)
    decoder, evidence, _ = linear_gaussian(**model)
    vae = linear_gaussian_vae(decoder, guide)
    x = evidence.sample((100,))
    objective = make_objective("mean_field", 1024)
    optimizer = torch.optim.LBFGS(vae.encoder.parameters(), max_iter=1000, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        with torch.random.fork_rng():
            torch.manual_seed(1)
            value = objective.differentiable_loss(vae.model, vae.guide, x) / len(x)
        value.backward()
        return value

    with vae.parameters_registered(False):
        optimizer.step(loss)
    return vae, evidence


def test_the_full_rank_family_recovers_the_exact_posterior_of_a_linear_gaussian_model():
    num_samples = 5000
    _, evidence, posterior_cov = linear_gaussian()
    x_test = evidence.sample((20,))
    exact = evidence.log_prob(x_test)
    full, _ = fitted_linear_gaussian_vae("full_rank")
    result = estimate_log_px(full, x_test, num_samples=num_samples, seed=1)
    assert torch.all((result.log_px - exact).abs() < 1e-3)
    assert torch.all(result.ess > 0.99 * num_samples)
    assert torch.all(result.gap.abs() < 1e-3)
    # any diagonal Gaussian is at least KL = -log(1 - rho^2) / 2 from the posterior: so is its
    # ELBO (averaged over K draws, unbiased) below log p(x), and its weights degenerate
    rho = posterior_cov[0, 1] / (posterior_cov[0, 0] * posterior_cov[1, 1]).sqrt()
    assert rho < -0.9
    kl_min = -0.5 * torch.log(1 - rho**2)
    diagonal, _ = fitted_linear_gaussian_vae("diagonal")
    result = estimate_log_px(diagonal, x_test, num_samples=num_samples, seed=1)
    assert torch.all(exact - result.elbo > 0.95 * kl_min)
    assert result.ess.mean() < 0.2 * num_samples


def gap_split_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gap_split.py"
    spec = importlib.util.spec_from_file_location("gap_split", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def linear_gaussian_with_an_unfitted_encoder(**model):
    """A diagonal-guide VAE with the linear-Gaussian decoder and a linear encoder left as built: its
    q(z|x) is off the posterior, so the per-image fit has work to do and an amortization gap to find."""
    decoder, evidence, posterior_cov = linear_gaussian(**model)
    torch.manual_seed(0)
    vae = linear_gaussian_vae(decoder)
    x = evidence.sample((5,))
    posterior_mean = (x - decoder.bias) @ decoder.weight @ posterior_cov / 0.5**2
    return vae, x, evidence.log_prob(x), posterior_mean, posterior_cov


@pytest.mark.parametrize("correlated", [False, True], ids=["diagonal posterior", "correlated posterior"])
def test_the_gap_split_benchmark_against_the_exact_split_of_a_linear_gaussian_model(correlated):
    # the best diagonal Gaussian for a Gaussian posterior N(m, S) has mean m and variances
    # 1 / (S^-1)_ii, at KL -log(1 - rho^2) / 2 from it: the exact approximation gap, zero where
    # S is diagonal (orthogonal columns of W), and there log p(x) from the mixture is exact too
    gap_split = gap_split_module()
    w = ((1.0, 1.0), (1.0, 1.2), (0.8, 1.0), (1.0, 0.9)) if correlated else ((1.0, 1.0), (1.0, -1.0), (0.5, 0.5), (0.5, -0.5))
    vae, x, exact_log_px, posterior_mean, posterior_cov = linear_gaussian_with_an_unfitted_encoder(w=w)
    rho = posterior_cov[0, 1] / (posterior_cov[0, 0] * posterior_cov[1, 1]).sqrt()
    assert (rho < -0.9) if correlated else (rho == 0)
    torch.manual_seed(2)
    q_star = gap_split.fit_per_image(vae, x, None, steps=1500, samples=256, lr=0.1)
    assert torch.allclose(q_star.base_dist.loc, posterior_mean, atol=0.01)
    assert torch.allclose(q_star.base_dist.scale**2, 1 / torch.linalg.inv(posterior_cov).diagonal().expand(5, 2), rtol=0.05)
    elbo_q, elbo_star, log_px, khat = gap_split.scores(vae, x, None, vae.posterior(x), q_star, 40000, 2000)
    # 20,000 draws of each proposal: the ELBOs' Monte Carlo error is about 0.01 nats
    assert torch.allclose(elbo_star, exact_log_px + 0.5 * torch.log(1 - rho**2), atol=0.03)
    assert (elbo_star - elbo_q).min() > 1.0
    if not correlated:
        assert torch.allclose(log_px, exact_log_px, atol=0.01)
        assert (khat < 0.7).all()


@pytest.mark.parametrize("likelihood", LIKELIHOODS, ids=str)
@pytest.mark.parametrize("prior", PRIORS, ids=str)
@pytest.mark.parametrize("guide", FAMILIES, ids=str)
def test_every_family_prior_and_likelihood_trains_50_steps_to_a_finite_loss_and_estimates_log_px(guide, prior, likelihood):
    torch.manual_seed(0)
    x = (torch.rand(40, 12) < 0.4).float() if "bernoulli" == likelihood else torch.rand(40, 12)
    vae = VAE(12, 4, prior=prior, likelihood=likelihood, guide=guide, encoder={"hidden": [16]}, decoder={"hidden": [16]})
    before = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    state = fit_tensors(vae, x, overrides=["train.max_steps=50", "train.epochs=100", "train.batch_size=12", "train.compile=off"],
                        progress=False)
    assert state.step == 50
    assert all(math.isfinite(row["train_elbo"]) and math.isfinite(row["test_elbo"]) for row in state.history)
    assert any(not torch.equal(before[k], v) for k, v in vae.encoder.state_dict().items())
    result = estimate_log_px(vae, x[:10], num_samples=20, seed=0)
    # log of the mean weight >= mean of the log weights, datum by datum (Jensen on the sample)
    assert torch.all(torch.isfinite(result.log_px)) and torch.all(result.gap >= 0)


@pytest.mark.parametrize("objective, particles", [("elbo", 2), ("mean_field", 1), ("iwae", 3)])
@pytest.mark.parametrize("guide", FAMILIES, ids=str)
def test_every_family_trains_a_conditional_vae_under_every_objective(guide, objective, particles):
    torch.manual_seed(0)
    x, y = (torch.rand(40, 12) < 0.4).float(), torch.arange(40) % 3
    vae = VAE(12, 4, guide=guide, num_classes=3, prior={"type": "vamp", "components": 6}, encoder={"hidden": [16]},
              decoder={"hidden": [16]})
    state = fit_tensors(vae, x, y, overrides=["train.max_steps=20", "train.epochs=100", "train.batch_size=12", "train.compile=off",
                                             f"train.objective={objective}", f"train.num_particles={particles}"], progress=False)
    assert state.step == 20 and all(math.isfinite(row["test_elbo"]) for row in state.history)
    samples = vae.sample(6, y=2)
    assert samples.shape == (6, 12) and torch.all((samples >= 0) & (samples <= 1))


@pytest.mark.parametrize("guide", FAMILIES, ids=str)
def test_predictive_and_the_estimator_take_every_family(guide):
    torch.manual_seed(0)
    x = (torch.rand(5, 12) < 0.4).float()
    vae = perturbed(VAE(12, 4, guide=guide, encoder={"hidden": [8]}, decoder={"hidden": [8]}))
    draws = Predictive(vae.model, guide=vae.guide, num_samples=3, return_sites=["z", "x"])(x)
    assert draws["z"].shape == (3, 5, 4) and draws["x"].shape == (3, 5, 12)
    result = estimate_log_px(vae, x, num_samples=50, seed=0)
    assert torch.all(torch.isfinite(result.log_px)) and torch.all(result.gap >= 0)
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (5, 4) and torch.all(scale > 0)
    assert torch.equal(vae.encode(x)[0], loc)  # a flow's moments come from the same draws each time


@pytest.mark.parametrize("guide, prior, closed_form", [
    ("diagonal", "normal", True), ("full_rank", "learned_normal", True), (IAF, "normal", False),
    ("diagonal", {"type": "mixture", "components": 3}, False),
], ids=str)
def test_mean_field_says_in_one_line_where_its_kl_is_a_monte_carlo_estimate(guide, prior, closed_form, capsys):
    vae = VAE(12, 4, guide=guide, prior=prior, encoder={"hidden": [8]}, decoder={"hidden": [8]})
    note = monte_carlo_kl_note(vae, torch.rand(2, 12))
    assert (note is None) == closed_form
    fit_tensors(vae, (torch.rand(30, 12) < 0.5).float(), overrides=["train.epochs=1", "train.compile=off"], progress=True)
    err = [line for line in capsys.readouterr().err.splitlines() if "mean_field" in line]
    if closed_form:
        assert err == []
    else:
        assert len(err) == 1 and "no closed form" in err[0] and "Monte Carlo estimate" in err[0]


class LocAndScale(nn.Module):
    """An encoder of one's own as the diagonal family wants it: (loc, scale) and nothing more."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(12, 8)

    def forward(self, x):
        h = self.net(x)
        return h[..., :4], h[..., 4:].exp()


def test_an_encoder_of_ones_own_without_the_extra_outputs_is_told_what_is_missing():
    vae = VAE(12, 4, guide="full_rank", encoder=LocAndScale(), decoder={"hidden": [8]})
    with pytest.raises(UserError, match="needs the encoder to return \\(loc, scale, extra\\) with 6 extra features"):
        vae.posterior(torch.rand(3, 12))


@register_guide("planar_for_test")
class ConditionalPlanarFlow(nn.Module):
    """A family registered from outside the package: planar flows (Rezende & Mohamed 2015) whose
    parameters come from the encoder's context, out of Pyro's transforms."""

    def __init__(self, latent_dim, *, flows=2, context=3):
        super().__init__()
        self.extra_outputs = context
        self.flows = nn.ModuleList(conditional_planar(latent_dim, context, [8]) for _ in range(flows))

    def forward(self, encoded):
        loc, scale, context = split_encoded(encoded, self)
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), [f.condition(context) for f in self.flows])

    def moments(self, encoded):
        z = self(encoded).rsample((64,))
        return z.mean(0), z.std(0)


def test_a_family_registered_with_the_decorator_trains_compiled_without_touching_model_code():
    assert "planar_for_test" in GUIDES.names()
    torch.manual_seed(0)
    vae = VAE(12, 3, guide={"type": "planar_for_test", "flows": 3}, encoder={"hidden": [8]}, decoder={"hidden": [8]})
    x = torch.rand(10, 12)
    step = Step(vae, make_objective("iwae", 2), dynamic_binarization=True, compile="on", backend=None)
    loss = step(x, None, noise.StepNoise(0, 0, 10, slice(None), x.device))
    assert step.compiled and torch.isfinite(loss)
    assert all(p.grad is not None for p in vae.family.parameters())


def test_an_iaf_run_saves_its_flows_orderings_and_loads_them(data_dir, tmp_path):
    cfg = small_config(data_dir, 'model.guide={type="iaf", flows=2, hidden=[16], context=4}', "train.epochs=1",
                       "data.limit=300", "data.test_limit=50")
    trained, _ = train_run(cfg, tmp_path / "run", progress=False)
    torch.manual_seed(123)  # a fresh VAE draws other orderings, which loading must replace
    assert not all(torch.equal(a.nn.permutation, b.nn.permutation)
                   for a, b in zip(trained.family.flows, build_vae(cfg, 784, None).family.flows))
    torch.manual_seed(123)
    _, vae, _ = load_run(tmp_path / "run")
    for mine, theirs in zip(vae.family.flows, trained.family.flows):
        assert torch.equal(mine.nn.permutation, theirs.nn.permutation)
    x = (torch.rand(4, 784) < 0.3).float()
    assert torch.equal(estimate_log_px(vae, x, num_samples=30, seed=0).log_px, estimate_log_px(trained, x, num_samples=30, seed=0).log_px)


@pytest.mark.parametrize("guide", ["model.guide=full_rank", 'model.guide={type="iaf", flows=2, hidden=[16], context=4}'], ids=["full_rank", "iaf"])
def test_a_run_with_a_richer_guide_resumes_exactly(data_dir, tmp_path, guide):
    sets = [guide, "data.limit=250", "data.test_limit=100"]
    straight, _ = train_run(small_config(data_dir, *sets), tmp_path / "straight", progress=False)
    train_run(small_config(data_dir, *sets, "train.epochs=1"), tmp_path / "resumed", progress=False)
    torch.manual_seed(99)  # whatever a fresh VAE draws is replaced by the checkpoint
    resumed, _ = train_run(small_config(data_dir, *sets), tmp_path / "resumed", resume=True, progress=False)
    assert_same_weights(straight, resumed)


@pytest.mark.parametrize("compile", ["off", "on"])
def test_a_one_dimensional_latent_trains_with_every_family(compile):
    """full_rank in one dimension has no off-diagonal entries (its encoder gives no extra outputs)."""
    torch.manual_seed(0)
    x = (torch.rand(30, 6) < 0.5).float()
    for guide in ("diagonal", "full_rank"):  # an iaf refuses one dimension (test_bad_input.py)
        vae = VAE(6, 1, guide=guide, encoder={"hidden": [8]}, decoder={"hidden": [8]})
        state = fit_tensors(vae, x, overrides=["train.max_steps=3", "train.batch_size=10", f"train.compile={compile}"], progress=False)
        assert state.step == 3 and math.isfinite(state.history[-1]["test_elbo"])
        loc, scale = vae.encode(x[:4])
        assert loc.shape == scale.shape == (4, 1) and (scale > 0).all()
