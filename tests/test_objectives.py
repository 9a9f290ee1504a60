"""The objectives' mathematics: DReG and STL against the gradients they replace (same draws where
they must agree exactly, many seeded draws where only expectations agree, within the Monte Carlo
error), the signal-to-noise ratios that motivate them, the special cases of MIWAE, PIWAE and
CIWAE, the guide density with stopped parameters through a flow, the refusals, and the compiled
step against eager for each objective, guide family and prior.

The many-draw tests use a linear-Gaussian model (tests/test_guides.py) with per-datum guide
parameters: an "encoder" whose outputs for N copies of one x are N free rows, so one backward
pass over the batch gives N independent draws of the gradient with respect to a datum's guide
parameters (the encoder's outputs, through which every encoder weight gets its gradient)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

import pyro_vae.objectives as objectives
from pyro_vae import VAE, UserError
from pyro_vae.objectives import make_objective
from test_guides import linear_gaussian, perturbed
from test_step import assert_same_step, loss_and_grads, tiny_vae

# two-sided false-alarm probability 6e-7 per element compared: the expectation tests below compare
# a handful of elements, so a correct estimator fails them with probability under 1e-5
Z_LIMIT = 5.0


class PerDatum(nn.Module):
    """q's parameters for each of N data as free rows: ``(loc, scale[, below])``."""

    def __init__(self, loc, log_scale, below=None):
        super().__init__()
        self.loc, self.log_scale = nn.Parameter(loc), nn.Parameter(log_scale)
        self.below = None if below is None else nn.Parameter(below)

    def forward(self, x):
        out = (self.loc, self.log_scale.exp())
        return out if self.below is None else out + (self.below,)

    def grads(self):
        return torch.cat([p.grad for p in (self.loc, self.log_scale, self.below) if p is not None], dim=-1)


def linear_gaussian_copies(n, guide="diagonal", exact=False, seed=0):
    """The linear-Gaussian VAE on n copies of one x, its guide's parameters per copy: the exact
    posterior (``exact``, full_rank only), or one broader than it (standard deviations 1 against
    about 0.7) with its mean 0.5 off in each dimension, where importance sampling works and the
    guide's gradient is far from zero."""
    torch.manual_seed(seed)
    decoder, evidence, posterior_cov = linear_gaussian()
    x = evidence.sample().expand(n, 4)
    w, b = decoder.weight, decoder.bias
    loc = posterior_cov @ w.T @ (x[0] - b) / 0.5**2
    tril = torch.linalg.cholesky(posterior_cov)
    scale = tril.diagonal()
    # L = diag(scale) (I + 0.1 B): the full-rank family's parameterization (guides.py)
    below = (tril[1, 0] / scale[1] / 0.1).reshape(1) if exact else torch.full((1,), 0.5, dtype=torch.float64)
    if not exact:
        loc, scale = loc + 0.5, torch.ones(2, dtype=torch.float64)
    rows = lambda t: t.expand(n, len(t)).clone()  # noqa: E731
    encoder = PerDatum(rows(loc), rows(scale.log()), rows(below) if guide == "full_rank" else None)
    vae = VAE(4, 2, likelihood={"type": "gaussian", "scale": 0.5}, encoder=encoder, decoder=decoder, guide=guide).double()
    vae.pending_data_init = False
    return vae, x.clone()


def gradients(vae, objective, x, seed):
    """Loss and every parameter's gradient, the guide's draws seeded by ``seed``."""
    vae.zero_grad(set_to_none=True)
    with pyro.validation_enabled(False), vae.parameters_registered(False), torch.random.fork_rng():
        torch.manual_seed(seed)
        loss = objective.differentiable_loss(vae.model, vae.guide, x)
        loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in vae.named_parameters() if p.grad is not None}


def guide_gradient_draws(objective, num_particles, n=4000, seed=1, **copies):
    """n independent draws of the gradient for one datum's guide parameters, shape (n, params)."""
    vae, x = linear_gaussian_copies(n, **copies)
    gradients(vae, make_objective(objective, num_particles), x, seed)
    return vae.encoder.grads()


def assert_same_expectation(a, b):
    """Paired draws on the same noise: the mean difference is zero within Z_LIMIT standard errors."""
    d = a - b
    z = d.mean(0) / (d.std(0) / math.sqrt(len(d)))
    assert torch.all(z.abs() < Z_LIMIT), z


def snr(draws):
    """Signal-to-noise ratio per parameter, |mean| / std over draws, averaged over parameters."""
    return (draws.mean(0).abs() / draws.std(0)).mean().item()


def test_dreg_gives_the_model_iwaes_gradient_on_the_same_draws():
    torch.manual_seed(0)
    vae = perturbed(tiny_vae().double())
    x = torch.rand(10, 12, dtype=torch.float64).bernoulli()
    iwae_loss, iwae = gradients(vae, make_objective("iwae", 5), x, seed=3)
    dreg_loss, dreg = gradients(vae, make_objective("dreg", 5), x, seed=3)
    assert dreg_loss == iwae_loss  # the same bound
    for name in iwae:
        if name.startswith("decoder"):
            assert torch.allclose(dreg[name], iwae[name], rtol=1e-12, atol=1e-14), name
    assert not torch.allclose(dreg["encoder.net.0.weight"], iwae["encoder.net.0.weight"])  # the estimator differs


def test_dreg_has_the_expected_guide_gradient_of_iwae_and_dropping_its_squared_weights_would_bias_it():
    iwae = guide_gradient_draws("iwae", 10)
    assert_same_expectation(guide_gradient_draws("dreg", 10), iwae)
    # power: the same path-only gradient with IWAE's weights (no hook) is biased, and is detected
    objectives.scale_latent_gradients, real = (lambda trace, factor: None), objectives.scale_latent_gradients
    try:
        biased = guide_gradient_draws("dreg", 10)
    finally:
        objectives.scale_latent_gradients = real
    d = biased - iwae
    assert (d.mean(0) / (d.std(0) / math.sqrt(len(d)))).abs().max() > Z_LIMIT


def test_the_guides_gradient_snr_falls_with_k_for_iwae_and_not_for_dreg():
    # Rainforth et al. (2018): O(1/sqrt(k)) for IWAE; Tucker et al. (2018): O(sqrt(k)) for DReG,
    # both for k large enough that the weights are not degenerate. Over 2000 draws an SNR is
    # resolved to about 0.02 (1/sqrt(2000)), small beside the factors compared
    ks = (10, 100, 1000)
    iwae = [snr(guide_gradient_draws("iwae", k, n=2000)) for k in ks]
    dreg = [snr(guide_gradient_draws("dreg", k, n=2000)) for k in ks]
    assert iwae[1] < iwae[0] / 3 and iwae[2] < iwae[0] / 3, iwae
    assert dreg[0] < dreg[1] < dreg[2], dreg
    assert all(d > i for d, i in zip(dreg, iwae))


def test_stl_has_the_elbos_expected_gradient_and_none_at_the_exact_posterior():
    for guide in ("diagonal", "full_rank"):
        assert_same_expectation(guide_gradient_draws("stl", 3, guide=guide), guide_gradient_draws("elbo", 3, guide=guide))
    # the exact posterior: log w = log p(x) for every z, so every draw's path gradient is zero
    stl = guide_gradient_draws("stl", 3, n=500, guide="full_rank", exact=True)
    elbo = guide_gradient_draws("elbo", 3, n=500, guide="full_rank", exact=True)
    assert elbo.std(0).min() > 0.01  # the standard gradient's score term: noise with mean zero
    assert stl.abs().max() < 1e-6  # the exact posterior's parameters carry float64 rounding (cholesky, log, exp)


def test_dreg_with_one_particle_is_stl():
    vae, x = linear_gaussian_copies(7, guide="full_rank")
    _, stl = gradients(vae, make_objective("stl"), x, seed=2)
    _, dreg = gradients(vae, make_objective("dreg"), x, seed=2)
    for name in stl:
        assert torch.allclose(dreg[name], stl[name], rtol=1e-12, atol=1e-14), name


@pytest.mark.parametrize("guide", ["diagonal", {"type": "iaf", "flows": 2, "hidden": [8], "context": 4}], ids=str)
def test_miwae_with_one_bound_is_iwae_and_ciwae_is_the_elbo_at_beta_1_and_iwae_at_0(guide):
    torch.manual_seed(0)
    vae = perturbed(tiny_vae(guide=guide).double())
    x = torch.rand(10, 12, dtype=torch.float64).bernoulli()
    cases = [({"type": "miwae", "bounds": 1}, "iwae"), ({"type": "ciwae", "beta": 1.0}, "elbo"), ({"type": "ciwae", "beta": 0.0}, "iwae"),
             ({"type": "miwae", "bounds": 6}, "elbo")]  # groups of one sample: the K-particle ELBO
    for spec, same in cases:
        loss, grads = gradients(vae, make_objective(spec, 6), x, seed=4)
        expected_loss, expected = gradients(vae, make_objective(same, 6), x, seed=4)
        assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-12), spec
        for name in grads:
            assert torch.allclose(grads[name], expected[name], rtol=1e-10, atol=1e-12), (spec, name)


@pytest.mark.parametrize("guide", ["diagonal", "full_rank", {"type": "iaf", "flows": 2, "hidden": [8], "context": 4}], ids=str)
def test_piwae_gives_the_model_iwaes_gradient_and_the_guide_miwaes(guide):
    torch.manual_seed(0)
    vae = perturbed(tiny_vae(guide=guide).double())
    x = torch.rand(10, 12, dtype=torch.float64).bernoulli()
    loss, piwae = gradients(vae, make_objective({"type": "piwae", "bounds": 3}, 6), x, seed=5)
    iwae_loss, iwae = gradients(vae, make_objective("iwae", 6), x, seed=5)
    _, miwae = gradients(vae, make_objective({"type": "miwae", "bounds": 3}, 6), x, seed=5)
    assert loss == iwae_loss
    for name in piwae:
        expected = iwae[name] if name.startswith("decoder") else miwae[name]  # the encoder and the flows: the guide's
        assert torch.allclose(piwae[name], expected, rtol=1e-10, atol=1e-12), name
        assert not torch.allclose(iwae[name], miwae[name]), name  # the two bounds' gradients do differ


@pytest.mark.parametrize("stable", [False, True], ids=["affine", "gated"])
def test_a_flows_density_with_stopped_parameters_inverts_the_flow_and_reaches_the_parameters_only_through_z(stable):
    torch.manual_seed(0)
    vae = perturbed(VAE(12, 3, guide={"type": "iaf", "flows": 2, "hidden": [8], "context": 4, "stable": stable}, encoder={"hidden": [8]}).double())
    x = torch.rand(5, 12, dtype=torch.float64)
    trace = pyro.poutine.trace(vae.guide).get_trace(x)
    site = trace.nodes["z"]
    trace.compute_log_prob()
    z, params = site["value"], [p for p in vae.parameters()]
    stopped = objectives.stopped_parameters(site)
    assert torch.allclose(stopped, site["log_prob"], atol=1e-10)  # the same density, by inversion
    # the gradient: d log q(z) / dz, taken through the live flow at a fresh copy of z, chained into dz/dphi
    z_leaf = z.detach().requires_grad_()
    dlogq_dz, = torch.autograd.grad(vae.posterior(x).log_prob(z_leaf).sum(), z_leaf)
    expected = torch.autograd.grad(z, params, dlogq_dz, retain_graph=True, allow_unused=True)
    got = torch.autograd.grad(stopped.sum(), params, retain_graph=True, allow_unused=True)
    for e, g in zip(expected, got):
        assert (e is None) == (g is None) and (e is None or torch.allclose(g, e, atol=1e-10))
    # the cached density (the sample's intermediates) carries the score channel as well
    cached = torch.autograd.grad(site["log_prob"].sum(), params, allow_unused=True)
    assert any(c is not None and e is not None and not torch.allclose(c, e) for c, e in zip(cached, expected))


def test_the_objectives_refuse_a_non_reparameterized_site_and_a_density_they_cannot_detach_naming_the_site():
    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.5 * torch.ones(len(x))))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("c", dist.Bernoulli(0.3 * torch.ones(len(x))))

    for name in ("elbo", "dreg", "piwae"):
        with pytest.raises(UserError, match="train.objective = .* needs a reparameterized guide, but the guide's site 'c'"):
            make_objective(name, 8).differentiable_loss(model, guide, torch.zeros(3))

    def positive_model(x):
        with pyro.plate("data", len(x)):
            s = pyro.sample("s", dist.Gamma(2.0, 1.0))
            pyro.sample("x", dist.Normal(0.0, s), obs=x)

    def positive_guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("s", dist.LogNormal(torch.zeros(len(x)), 1.0))

    for name in ("stl", "dreg"):
        with pytest.raises(UserError, match="the guide's site 's' is a LogNormal, whose log-density this objective cannot re-evaluate"):
            make_objective(name, 2).differentiable_loss(positive_model, positive_guide, torch.zeros(3))
    make_objective("iwae", 2).differentiable_loss(positive_model, positive_guide, torch.zeros(3))  # the standard gradient needs no re-evaluation


def test_each_objective_works_with_pyros_svi_outside_the_package():
    x = torch.rand(20, 12).bernoulli()
    for cls in (objectives.DReG_IWAE, objectives.STL_ELBO, objectives.MIWAE_ELBO, objectives.PIWAE_ELBO, objectives.CIWAE_ELBO):
        torch.manual_seed(0)
        pyro.clear_param_store()
        vae = tiny_vae()
        objective = cls(num_particles=8)
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), objective)
        before = {name: p.detach().clone() for name, p in vae.named_parameters()}
        torch.manual_seed(1)
        expected = objective.loss(vae.model, vae.guide, x)
        torch.manual_seed(1)  # the same draws: SVI's loss is the objective's, before the update
        loss = svi.step(x)
        assert loss == pytest.approx(expected, rel=1e-6), cls.name
        assert math.isfinite(loss) and all(not torch.equal(p, before[name]) for name, p in vae.named_parameters()), cls.name


def test_the_compiled_step_refuses_an_objective_without_a_reduction_in_one_line(capsys):
    vae, x = tiny_vae(), torch.rand(10, 12)
    from pyro_vae.step import Step

    step = Step(vae, Trace_ELBO(), dynamic_binarization=True, compile="on", backend=None)
    with pytest.raises(UserError, match="cannot be compiled: the objective Trace_ELBO is not a pyro_vae.objectives.Objective"):
        step(x, None, objectives_noise(x))
    step = Step(vae, Trace_ELBO(), dynamic_binarization=True, compile="auto", backend=None)
    loss = step(x, None, objectives_noise(x))  # eager: Pyro's own Trace_ELBO, never another objective
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training eager" in err and "Trace_ELBO" in err
    eager, _, _ = loss_and_grads(vae, "elbo", 1, "off", x)
    assert loss.item() == pytest.approx(eager.item(), rel=1e-5)


def objectives_noise(x):
    from pyro_vae import noise

    return noise.StepNoise(0, 0, len(x), slice(None), x.device)


def test_objective_tables_are_checked_and_name_the_key():
    from pyro_vae import config

    cfg = config.load(None, ['train.objective={type="piwae", bounds=8}', "train.num_particles=64"])
    assert isinstance(make_objective(cfg.train.objective, cfg.train.num_particles), objectives.PIWAE_ELBO)
    assert config.load(None, ["train.objective=dreg", "train.num_particles=5"]).train.objective == "dreg"
    with pytest.raises(UserError, match=r"train.objective = miwae with bounds = 8 needs train.num_particles \(here 12\) to be a positive multiple"):
        config.load(None, ["train.objective=miwae", "train.num_particles=12"])
    with pytest.raises(UserError, match="unknown parameter 'k' for objective 'piwae' in train.objective; valid parameters: bounds"):
        config.load(None, ['train.objective={type="piwae", k=8}'])
    with pytest.raises(UserError, match=r"train.objective = ciwae needs beta in \[0, 1\], got 2"):
        config.load(None, ['train.objective={type="ciwae", beta=2.0}'])
    with pytest.raises(UserError, match="train.objective = 'vimco' is not valid; choose one of: ciwae, dreg, elbo, iwae, mean_field"):
        config.load(None, ["train.objective=vimco"])


def test_the_traced_conditional_step_equals_eager_for_the_reweighting_objectives():
    x, y = torch.rand(10, 12), torch.arange(10) % 4
    for objective in ("dreg", {"type": "piwae", "bounds": 2}):
        for prior in ("normal", {"type": "vamp", "components": 4}):  # the VampPrior's pseudo-inputs carry labels
            assert_same_step(tiny_vae(prior, num_classes=4), objective, 4, x, y)


def test_a_dreg_run_resumes_exactly(data_dir, tmp_path):
    from helpers import assert_same_weights, small_config
    from pyro_vae.run import train_run

    sets = ["data.limit=250", "data.test_limit=100", "model.latent_dim=4", "model.encoder.hidden=[16]", "model.decoder.hidden=[16]",
            "train.objective=dreg", "train.num_particles=4", "train.kl_warmup_epochs=1"]
    straight, _ = train_run(small_config(data_dir, *sets), tmp_path / "straight", progress=False)
    train_run(small_config(data_dir, *sets, "train.epochs=1"), tmp_path / "resumed", progress=False)
    resumed, _ = train_run(small_config(data_dir, *sets), tmp_path / "resumed", resume=True, progress=False)
    assert_same_weights(straight, resumed)
