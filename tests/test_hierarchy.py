"""Hierarchical latents (model.layers): the sites, each layer's densities, the estimator against a
two-layer linear-Gaussian model's exact marginal, every objective traced against eager, every
prior and likelihood training, exact resume and the latent-space tools."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from helpers import assert_same_weights, random_weights, small_config
from pyro_vae import VAE, UserError, config
from pyro_vae.explore import encode_run, explore_run
from pyro_vae.layers import GaussianLayer
from pyro_vae.marginal import estimate_log_px, estimate_log_px_summed
from pyro_vae.networks import MLPEncoder
from pyro_vae.objectives import make_objective, monte_carlo_kl_note
from pyro_vae.run import fit_tensors, train_run
from test_objectives import assert_same_expectation, gradients
from test_step import ESTIMATORS, LIKELIHOODS, OBJECTIVES, PRIORS, assert_same_step

TWO_LAYERS = [{"latent_dim": 2, "hidden": [8]}]


def two_layer_vae(prior="normal", likelihood="bernoulli", num_classes=None, layers=TWO_LAYERS, guide="diagonal"):
    return VAE(12, 3, prior=prior, likelihood=likelihood, encoder={"hidden": [8]}, decoder={"hidden": [8]},
               num_classes=num_classes, guide=guide, layers=layers)


def traces(vae, x, y=None):
    guide_trace = poutine.trace(vae.guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, y)
    return model_trace, guide_trace


def sample_sites(trace):
    return [name for name, site in trace.nodes.items() if site["type"] == "sample" and name != "data"]


def test_the_sites_are_z_then_z2_and_z3_bottom_up_in_the_guide_and_top_down_in_the_model():
    vae = two_layer_vae(layers=[{"latent_dim": 2, "hidden": [8]}, {"latent_dim": 1, "hidden": [4]}])
    model_trace, guide_trace = traces(vae, torch.rand(5, 12).bernoulli())
    assert vae.latent_sites == ["z", "z2", "z3"] and vae.top_site == "z3" and vae.top_dim == 1
    assert sample_sites(guide_trace) == ["z", "z2", "z3"]
    assert sample_sites(model_trace) == ["z3", "z2", "z", "x"]
    assert [model_trace.nodes[s]["value"].shape for s in ("z", "z2", "z3")] == [(5, 3), (5, 2), (5, 1)]
    # the one-layer VAE is the empty stack: its state_dict and sites are today's
    one = VAE(12, 3, encoder={"hidden": [8]}, decoder={"hidden": [8]})
    assert one.latent_sites == ["z"] and not any(k.startswith("layers") for k in one.state_dict())


def gaussian_log_density(value, loc, scale):
    """An independent diagonal-Gaussian log-density, summed over the last dimension."""
    return (-0.5 * ((value - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def test_each_layers_conditional_densities_match_an_independent_computation():
    torch.manual_seed(0)
    vae = two_layer_vae().double()
    random_weights(vae, 0.5)
    x = torch.rand(6, 12, dtype=torch.float64).bernoulli()
    model_trace, guide_trace = traces(vae, x)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    z, z2 = guide_trace.nodes["z"]["value"], guide_trace.nodes["z2"]["value"]
    layer = vae.layers[0]

    def by_hand(net, h):  # the MLP by hand: its two linear maps, tanh between, then (loc, exp(log-scale))
        first, last = net.net[0], net.net[2]
        out = torch.tanh(h @ first.weight.T + first.bias) @ last.weight.T + last.bias
        d = out.shape[-1] // 2
        return out[..., :d], out[..., d:].exp()

    expected = {
        ("model", "z2"): gaussian_log_density(z2, torch.zeros(2, dtype=x.dtype), torch.ones(2, dtype=x.dtype)),
        ("model", "z"): gaussian_log_density(z, *by_hand(layer.down, z2)),
        ("guide", "z"): gaussian_log_density(z, *by_hand(vae.encoder, x)),
        ("guide", "z2"): gaussian_log_density(z2, *by_hand(layer.up, z)),
    }
    for (which, name), value in expected.items():
        trace = model_trace if which == "model" else guide_trace
        assert torch.allclose(trace.nodes[name]["log_prob"], value, rtol=1e-12, atol=1e-12), (which, name)


class LinearGaussian:
    r"""A two-layer linear-Gaussian model, x in R^4, z (site "z") in R^3, z2 in R^2:

    z2 ~ N(0, I), z | z2 ~ N(A z2 + a, diag s^2), x | z ~ N(B z + b, sigma^2 I),

    with A's rows and B's columns orthogonal, so that the exact posterior p(z | x) p(z2 | z) is a
    pair of diagonal Gaussians whose means are linear in x and z: the bottom-up guide holds it
    exactly, and then every importance weight equals p(x). The marginal of x is
    N(B a + b, B (A A^T + diag s^2) B^T + sigma^2 I)."""

    A = torch.tensor([[1.5, 0.0], [0.0, -0.8], [0.0, 0.0]], dtype=torch.float64)
    a = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    s = torch.tensor([0.4, 0.7, 1.1], dtype=torch.float64)
    B = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([0.1, 0.0, -0.3, 0.2], dtype=torch.float64)
    sigma = 0.5

    def marginal(self):
        cov = self.B @ (self.A @ self.A.T + torch.diag(self.s**2)) @ self.B.T + self.sigma**2 * torch.eye(4, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.B @ self.a + self.b, cov)

    def vae(self, exact=True):
        A, a, s, B, b, sigma = self.A, self.a, self.s, self.B, self.b, self.sigma
        prior_cov = A @ A.T + torch.diag(s**2)  # of z: diagonal, as A's rows are orthogonal
        post_cov = torch.linalg.inv(torch.linalg.inv(prior_cov) + B.T @ B / sigma**2)  # of z | x: diagonal
        z2_cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + A.T @ torch.diag(s**-2) @ A)  # of z2 | z
        encoder = self.linear(4, 3, post_cov @ B.T / sigma**2, post_cov @ (torch.linalg.inv(prior_cov) @ a - B.T @ b / sigma**2),
                              post_cov.diagonal().sqrt())
        layer = GaussianLayer(3, 0, "test", latent_dim=2, hidden=(1,))
        gain = z2_cov @ A.T @ torch.diag(s**-2)
        layer.up = self.linear(3, 2, gain, -gain @ a, z2_cov.diagonal().sqrt())
        layer.down = self.linear(2, 3, A, a, s)
        decoder = torch.nn.Linear(3, 4).double()
        with torch.no_grad():
            decoder.weight.copy_(B)
            decoder.bias.copy_(b)
        vae = VAE(4, 3, likelihood={"type": "gaussian", "scale": sigma}, encoder=encoder, decoder=decoder, layers=[layer]).double()
        with torch.no_grad():  # built in float32: its log(sigma) rounded there
            vae.likelihood.log_scale.fill_(math.log(sigma))
        if not exact:  # a guide that is not the posterior: every weight differs
            with torch.no_grad():
                for p in (*vae.encoder.parameters(), *layer.up.parameters()):
                    p.mul_(0.8)
        return vae

    @staticmethod
    def linear(n_in, n_out, weight, bias, scale):
        """An encoder of no hidden layer: loc = weight h + bias, a constant scale."""
        net = MLPEncoder(n_in, n_out, hidden=()).double()
        with torch.no_grad():
            net.net[0].weight.zero_()
            net.net[0].weight[:n_out] = weight
            net.net[0].bias[:n_out] = bias
            net.net[0].bias[n_out:] = scale.log()
        return net


def test_the_estimator_is_exact_for_a_two_layer_linear_gaussian_model_whose_guide_is_its_posterior():
    model = LinearGaussian()
    torch.manual_seed(0)
    x = model.marginal().sample((20,))
    result = estimate_log_px(model.vae(), x, num_samples=8)
    assert torch.allclose(result.log_px, model.marginal().log_prob(x), rtol=0, atol=1e-9)
    assert torch.allclose(result.elbo, result.log_px, rtol=0, atol=1e-9)  # every weight is p(x): no gap
    assert torch.allclose(result.ess, torch.full_like(result.ess, 8.0))


def test_the_estimator_approaches_the_exact_marginal_with_an_imperfect_guide():
    model = LinearGaussian()
    torch.manual_seed(1)
    x = model.marginal().sample((10,))
    exact = model.marginal().log_prob(x)
    pyro.set_rng_seed(2)
    with torch.no_grad():
        result = estimate_log_px(model.vae(exact=False), x, num_samples=20000)
    assert (result.elbo < exact).all()  # the gap is KL(q || posterior) > 0 for this guide
    # log of a mean of K weights: its error is about the weights' relative standard deviation
    # over sqrt(K) (delta method), 1/sqrt(ESS); allow 5 such errors per datum
    tolerance = 5 / result.ess.sqrt()
    assert ((result.log_px - exact).abs() < tolerance).all(), (result.log_px - exact, tolerance)


def test_mean_field_takes_the_closed_form_kl_only_at_the_top_and_stays_unbiased():
    model = LinearGaussian()
    vae = model.vae()
    torch.manual_seed(3)
    x = model.marginal().sample((1,))
    note = monte_carlo_kl_note(vae, x)
    assert "site(s) z have no closed form" in note
    # the guide is the posterior: the ELBO is log p(x). Each particle's mean_field term is an
    # unbiased estimate of it; with a closed-form KL at the bottom site (which p(z | z2) forbids:
    # z2 is drawn from z) it would not be
    pyro.set_rng_seed(4)
    with torch.no_grad():
        estimates = torch.stack([-make_objective("mean_field", 1000).differentiable_loss(vae.model, vae.guide, x) for _ in range(20)])
    exact = model.marginal().log_prob(x).sum()
    assert abs(estimates.mean() - exact) < 4 * estimates.std() / math.sqrt(len(estimates)), (estimates.mean(), exact)


@pytest.mark.parametrize("objective, particles", OBJECTIVES + ESTIMATORS, ids=str)
@pytest.mark.parametrize("prior", [PRIORS[0], PRIORS[3]], ids=str)
def test_the_traced_two_layer_step_equals_eager_for_every_objective(prior, objective, particles):
    torch.manual_seed(0)
    vae = two_layer_vae(prior).double()
    random_weights(vae, 0.3)
    assert_same_step(vae, objective, particles, torch.rand(10, 12, dtype=torch.float64), kl_weight=0.5)


def guide_gradients(vae, objective, x, seed):
    """The gradient of every guide-side parameter (the encoder and each layer's q network), flat."""
    _, grads = gradients(vae, objective, x, seed)
    return torch.cat([g.reshape(-1) for name, g in grads.items() if name.startswith("encoder") or ".up." in name])


@pytest.mark.parametrize("objective", ["stl", "dreg"])
def test_stl_and_dreg_give_a_two_layer_exact_posterior_no_guide_gradient(objective):
    # q(z, z2 | x) is the posterior: log w = log p(x) at every (z, z2), so the path through both
    # samples is zero. It is only zero if log q(z2 | z) keeps its dependence on z and the path
    # through z2 is weighted once: detaching q(z2 | z)'s parameters would leave d/dz of it out
    model = LinearGaussian()
    vae = model.vae()
    torch.manual_seed(5)
    x = model.marginal().sample((6,))
    path_only = guide_gradients(vae, make_objective(objective, 4), x, seed=1)
    standard = guide_gradients(vae, make_objective("elbo" if objective == "stl" else "iwae", 4), x, seed=1)
    assert standard.abs().max() > 0.1  # the score channel: noise of mean zero
    assert path_only.abs().max() < 1e-9, path_only.abs().max()


def test_dreg_on_two_layers_gives_the_model_iwaes_gradient_and_the_guide_its_expectation():
    torch.manual_seed(0)
    vae = two_layer_vae().double()
    random_weights(vae, 0.3)
    x = torch.rand(8, 12, dtype=torch.float64).bernoulli()
    _, iwae = gradients(vae, make_objective("iwae", 5), x, seed=3)
    _, dreg = gradients(vae, make_objective("dreg", 5), x, seed=3)
    for name in iwae:
        if name.startswith("decoder") or ".down." in name:
            assert torch.allclose(dreg[name], iwae[name], rtol=1e-12, atol=1e-14), name
    draws = {name: torch.stack([guide_gradients(vae, make_objective(name, 5), x, seed) for seed in range(400)]) for name in ("iwae", "dreg")}
    assert_same_expectation(draws["dreg"], draws["iwae"])


@pytest.mark.parametrize("likelihood", LIKELIHOODS, ids=str)
@pytest.mark.parametrize("prior", PRIORS, ids=str)
def test_every_prior_and_likelihood_trains_a_two_layer_model_for_50_steps(prior, likelihood):
    torch.manual_seed(0)
    x = torch.rand(100, 12)
    if likelihood == "bernoulli":
        x = x.bernoulli()
    state = fit_tensors(two_layer_vae(prior, likelihood), x, overrides=["train.batch_size=10", "train.epochs=6", "train.max_steps=50",
                                                                          "train.compile=off"], progress=False)
    assert state.step == 50 and all(math.isfinite(h["test_elbo"]) for h in state.history)


def test_a_conditional_two_layer_model_with_warm_up_and_the_semi_supervised_one_train():
    torch.manual_seed(0)
    x, y = torch.rand(60, 12).bernoulli(), torch.arange(60) % 3
    for vae, overrides in ((two_layer_vae(num_classes=3), ["train.kl_warmup_epochs=2"]),):
        state = fit_tensors(vae, x, y, overrides=["train.batch_size=10", "train.epochs=2", "train.compile=off", *overrides], progress=False)
        assert all(math.isfinite(h["test_elbo"]) for h in state.history)
    # the conditional VAE's labels reach every layer's networks: a different label moves q(z2 | z)
    vae = two_layer_vae(num_classes=3)
    z = torch.randn(4, 3)
    onehot = vae.onehot(torch.tensor([0, 0, 0, 0])), vae.onehot(torch.tensor([1, 1, 1, 1]))
    assert not torch.equal(vae.layers[0].posterior(z, onehot[0]).mean, vae.layers[0].posterior(z, onehot[1]).mean)


def test_a_semi_supervised_two_layer_model_enumerates_its_label_through_every_layer():
    torch.manual_seed(0)
    x = torch.rand(40, 12).bernoulli()
    y = torch.full((40,), -1)
    y[:6] = torch.arange(6) % 3
    vae = VAE(12, 3, encoder={"hidden": [8]}, decoder={"hidden": [8]}, num_classes=3, classifier={"hidden": [8]}, layers=TWO_LAYERS)
    state = fit_tensors(vae, x[:30], y[:30], x_test=x[30:], y_test=torch.arange(10) % 3,
                        overrides=["train.batch_size=10", "train.epochs=2", "train.objective=elbo"], progress=False)
    assert all(math.isfinite(h["test_elbo"]) for h in state.history)
    # log p(x) sums p(x, y) over the classes, each estimated with every layer's weights
    result = estimate_log_px_summed(vae, x[30:], num_samples=4)
    assert torch.isfinite(result.log_px).all()


def test_a_two_layer_run_resumes_bitwise_and_its_tools_see_every_layer(data_dir, tmp_path):
    overrides = ["model.layers=[{latent_dim=4, hidden=[16]}]", "data.limit=300", "data.test_limit=200"]
    straight, _ = train_run(small_config(data_dir, *overrides, "train.epochs=3"), tmp_path / "straight", progress=False)
    train_run(small_config(data_dir, *overrides, "train.epochs=1"), tmp_path / "resumed", progress=False)
    resumed, state = train_run(small_config(data_dir, *overrides, "train.epochs=3"), tmp_path / "resumed", resume=True, progress=False)
    assert state.epoch == 3
    assert_same_weights(straight, resumed)
    assert any(name.startswith("layers.0.") for name in straight.state_dict())

    arrays = encode_run(tmp_path / "straight", tmp_path / "codes.npz")
    assert arrays["loc"].shape == (200, 8) and arrays["loc_z2"].shape == (200, 4) and arrays["scale_z2"].shape == (200, 4)
    summary = explore_run(tmp_path / "straight", tmp_path / "figures")
    assert [layer["site"] for layer in summary["layers"]] == ["z", "z2"]
    assert [layer["latent_dim"] for layer in summary["layers"]] == [8, 4]
    assert summary["active_units"] == sum(layer["active_units"] for layer in summary["layers"])
    assert summary["active_units_by_layer"] == "+".join(str(layer["active_units"]) for layer in summary["layers"])
    assert np.isfinite(summary["kl_total"])
    from pyro_vae.generate import generate_run

    generate_run(tmp_path / "straight", tmp_path / "drawn.npz", n=6)  # z2 ~ p(z2), z ~ p(z | z2), E[x | z]
    drawn = np.load(tmp_path / "drawn.npz")
    assert drawn["images"].shape == (6, 28, 28) and np.isfinite(drawn["images"]).all()


@pytest.mark.parametrize("layers, expected", [
    ("[]", "model.layers is an empty list; leave the key out for a one-layer VAE"),
    ("[{latent_dim=0}]", "model.layers[0] (site z2) needs latent_dim, a whole number of at least 1, got 0"),
    ('[{latent_dim=4, hidden="wide"}]', "parameter 'hidden' of layer 'gaussian' in model.layers[0] (site z2) must be a list of whole numbers"),
    ("[{latent_dim=4, hidden=[8, 0]}]", "hidden must list at least one positive layer width"),
    ("[{latent_dim=4}, 7]", "model.layers[1] (site z3) must be a table"),
    ("{latent_dim=4}", "model.layers must be a list of tables"),
    ("[{latent_dim=4, width=3}]", "unknown parameter 'width' for layer 'gaussian'"),
])
def test_bad_layer_specifications_are_one_line_before_any_data(layers, expected, tmp_path, capsys):
    from pyro_vae.cli import main

    # a data folder that does not exist: the config is refused before anything is read or written
    code = main(["train", "--out", str(tmp_path / "run"), "--set", f'data.dir="{tmp_path / "no_data"}"', "--set", f"model.layers={layers}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_one_layer_config_reads_and_writes_as_before():
    cfg = config.load(None, [])
    assert "layers" not in cfg.to_toml()
    two = config.load(None, ["model.layers=[{latent_dim=4}]"])
    assert config.loads(two.to_toml()).model.layers == [{"type": "gaussian", "latent_dim": 4}]


@pytest.mark.parametrize("overrides", [
    [],
    ["model.layers=[{latent_dim=50, hidden=[100, 100]}]", "model.latent_dim=100"],
    ['model.layers=[{latent_dim=6, hidden=[32], guide="full_rank"}, {latent_dim=3, hidden=[16], guide={type="iaf", hidden=[8], context=4}}]',
     "model.prior=vamp", "model.conditional=true"],
], ids=["one layer", "Burda's two", "three, every family"])
def test_the_memory_check_counts_every_layers_parameters(overrides):
    from pyro_vae import sizes
    from pyro_vae.runfolder import build_vae

    cfg = config.load(None, overrides)
    counted = sum(n for n, _ in sizes.training_terms(cfg, 784, 10, 100)[0])
    built = sum(p.numel() for p in build_vae(cfg, 784, 10).parameters())
    assert abs(counted - built) <= 0.01 * built, (counted, built)


def test_predictive_and_generate_see_every_layer():
    from pyro.infer import Predictive

    vae = two_layer_vae()
    x = torch.rand(5, 12).bernoulli()
    draws = Predictive(vae.model, guide=vae.guide, num_samples=3, return_sites=["z", "z2", "x"])(x)
    assert draws["z"].shape == (3, 5, 3) and draws["z2"].shape == (3, 5, 2) and draws["x"].shape == (3, 5, 12)
    torch.manual_seed(0)
    images = vae.sample(4)
    torch.manual_seed(0)
    top = vae.prior_distribution().sample((4,))
    # the same top-layer draw, then p(z | z2) drawn: the images are means of x given that z
    assert torch.equal(images, vae.sample(4, z=top))
    assert not torch.equal(vae.sample(4, z=top, means_below=True), vae.sample(4, z=top))
