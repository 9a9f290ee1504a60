"""The importance-weighted log p(x) against exact answers.

* Linear-Gaussian VAE, z ~ N(0, I), x | z ~ N(W z + b, s^2 I): p(x) = N(x; b, W W^T + s^2 I).
  With W = Q diag(sigma), Q having orthonormal columns, the true posterior is a diagonal Gaussian,
  q(z|x) = N(A (x - b), diag(v)) with v = 1 / (1 + sigma^2 / s^2) and A = diag(v) W^T / s^2,
  which the guide can represent exactly: then every importance weight equals p(x), the estimate
  is exact for any K and the ESS is exactly K.
* Bernoulli pixels with a 1-D latent: p(x) = int N(z; 0, 1) p(x | z) dz on a fine grid.
"""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from pyro_vae import VAE, UserError, cli, estimate_log_px, marginal

D, LATENT, S = 5, 2, 0.6
SIGMA = torch.tensor([1.5, 0.8])


class LinearEncoder(nn.Module):
    """q(z|x[, y]) = N(A x + c[ + C y], diag(scale^2)): exact for the linear-Gaussian model."""

    def __init__(self, A, c, scale, C=None):
        super().__init__()
        self.A, self.c, self.scale, self.C = A, c, scale, C

    def forward(self, x, y_onehot=None):
        loc = x @ self.A.T + self.c
        if y_onehot is not None:
            loc = loc + y_onehot @ self.C.T
        return loc, self.scale.expand_as(loc)


def linear_gaussian(num_classes=None):
    """(W, b, decoder) with orthogonal columns in W, so the posterior is diagonal."""
    Q, _ = torch.linalg.qr(torch.randn(D, LATENT))
    W = Q * SIGMA
    b = torch.randn(D)
    decoder = nn.Linear(LATENT, D)
    with torch.no_grad():
        decoder.weight.copy_(W)
        decoder.bias.copy_(b)
    return W, b, decoder


def posterior_map(W):
    v = 1 / (1 + SIGMA**2 / S**2)
    return v[:, None] * W.T / S**2, v.sqrt()


def exact_gaussian(x, W, b):
    return torch.distributions.MultivariateNormal(b, W @ W.T + S**2 * torch.eye(D)).log_prob(x).double()


def gaussian_vae(encoder, decoder, **kwargs):
    return VAE(input_dim=D, latent_dim=LATENT, likelihood={"type": "gaussian", "scale": S}, encoder=encoder, decoder=decoder, **kwargs)


def draw_gaussian(W, b, n):
    return torch.randn(n, LATENT) @ W.T + b + S * torch.randn(n, D)


def test_linear_gaussian_exact_posterior_is_exact_with_ess_k():
    W, b, decoder = linear_gaussian()
    A, scale = posterior_map(W)
    vae = gaussian_vae(LinearEncoder(A, -A @ b, scale), decoder)
    x = draw_gaussian(W, b, 20)
    # 37 samples in chunks of 10: the ESS of constant weights counts the samples actually used
    r = estimate_log_px(vae, x, num_samples=37, chunk_size=10, batch_size=8, seed=0)
    assert torch.allclose(r.log_px, exact_gaussian(x, W, b), atol=1e-4)
    assert torch.allclose(r.ess, torch.full((20,), 37.0, dtype=torch.float64), rtol=1e-6)
    assert r.gap.abs().max() < 1e-4


def test_linear_gaussian_untrained_encoder_matches_exact():
    W, b, decoder = linear_gaussian()
    # an untrained encoder: small random weights, so q(z|x) is near the prior, as at initialization
    encoder = LinearEncoder(0.05 * torch.randn(LATENT, D), torch.zeros(LATENT), 1.2 * torch.ones(LATENT))
    vae = gaussian_vae(encoder, decoder)
    x = draw_gaussian(W, b, 10)
    r = estimate_log_px(vae, x, num_samples=100000, seed=0)
    assert (r.log_px - exact_gaussian(x, W, b)).abs().max() < 0.05
    assert (r.gap > 0).all()
    assert r.khat.max() < 0.7


def test_conditional_linear_gaussian_uses_the_labels():
    """x | z, y ~ N(W z + b + B onehot(y), s^2 I): log p(x | y) needs y in both model and guide."""
    W, b, linear = linear_gaussian()
    B = 3 * torch.randn(D, 3)

    class Decoder(nn.Module):
        def forward(self, z, y_onehot):
            return linear(z) + y_onehot @ B.T

    A, scale = posterior_map(W)
    vae = gaussian_vae(LinearEncoder(A, -A @ b, scale, C=-A @ B), Decoder(), num_classes=3)
    y = torch.arange(12) % 3
    x = draw_gaussian(W, b, 12) + B.T[y]
    r = estimate_log_px(vae, x, y, num_samples=50, seed=0)
    assert torch.allclose(r.log_px, exact_gaussian(x - B.T[y], W, b), atol=1e-4)
    with pytest.raises(UserError, match="labels"):
        estimate_log_px(vae, x, num_samples=5)


def test_mixture_prior_needs_no_estimator_change():
    """p(z) = sum_k pi_k N(m_k, diag(r_k^2)) gives p(x) = sum_k pi_k N(x; W m_k + b, W diag(r_k^2) W^T + s^2 I)."""
    W, b, decoder = linear_gaussian()
    vae = gaussian_vae(LinearEncoder(torch.zeros(LATENT, D), torch.zeros(LATENT), 2 * torch.ones(LATENT)), decoder, prior={"type": "mixture", "components": 3})
    prior = vae.prior
    x = draw_gaussian(W, b, 10)
    with torch.no_grad():
        covs = torch.diag_embed(prior.log_scale.exp() ** 2)
        components = torch.distributions.MultivariateNormal(prior.loc @ W.T + b, W @ covs @ W.T + S**2 * torch.eye(D))
        exact = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=prior.logits), components).log_prob(x)
    r = estimate_log_px(vae, x, num_samples=100000, seed=0)
    assert (r.log_px - exact.double()).abs().max() < 0.05


PIXELS = 10


def bernoulli_model():
    decoder = nn.Linear(1, PIXELS)
    with torch.no_grad():
        decoder.weight.copy_(1.5 * torch.randn(PIXELS, 1))
        decoder.bias.copy_(torch.randn(PIXELS))
    vae = VAE(input_dim=PIXELS, latent_dim=1, likelihood="bernoulli", encoder={"hidden": [16]}, decoder=decoder)
    with torch.no_grad():
        x = torch.bernoulli(torch.sigmoid(decoder(torch.randn(200, 1))))
    return vae, decoder, x


def exact_bernoulli(decoder, x):
    """log of the Riemann sum of N(z) p(x|z) over z in [-12, 12] with spacing 0.001, where
    log p(x|z) = sum_i x_i l_i - softplus(l_i) for the decoder's logits l = w z + c."""
    grid = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    w, c = decoder.weight.detach().double()[:, 0], decoder.bias.detach().double()
    logits = grid[:, None] * w + c
    log_lik = x.double() @ logits.T - nn.functional.softplus(logits).sum(-1)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(grid)
    return torch.logsumexp(log_prior + log_lik, dim=1) + math.log(grid[1] - grid[0])


def test_bernoulli_1d_latent_matches_grid_integral():
    vae, decoder, x = bernoulli_model()
    x = x[:30]
    r = estimate_log_px(vae, x, num_samples=20000, seed=0)
    assert (r.log_px - exact_bernoulli(decoder, x)).abs().max() < 0.05
    assert (r.log_px < 0).all()  # binary data: a probability, so log p(x) is negative


def test_estimate_rises_toward_exact_with_k_and_stays_above_elbo():
    vae, decoder, x = bernoulli_model()
    exact = exact_bernoulli(decoder, x).mean().item()
    results = {k: estimate_log_px(vae, x, num_samples=k, seed=1) for k in (1, 10, 1000)}
    means = [results[k].log_px.mean().item() for k in (1, 10, 1000)]
    assert means[0] < means[1] < means[2]
    assert abs(means[2] - exact) < 0.05
    assert torch.equal(results[1].log_px, results[1].elbo)  # one sample: the ELBO itself
    for k in (10, 1000):
        assert results[k].log_px.mean() > results[k].elbo.mean()


# PSIS k-hat against weights whose tail is known. w = U^(-k), U ~ Uniform(0, 1), has
# P(w > t) = t^(-1/k) for t >= 1: a Pareto tail, i.e. a generalized Pareto shape of exactly k, and
# log w = k E with E ~ Exp(1). PSIS fits the largest M = 3 sqrt(K) = 300 of K = 10000 weights; above
# the next largest they are exactly generalized Pareto with shape k, so one estimate's standard
# deviation is about (1 + k) / sqrt(M) <= 0.11 and the mean over 100 data has a standard error
# <= 0.011. ArviZ's weak prior pulls each estimate toward 0.5 by 10 / (M + 10) of the distance,
# <= 0.013 here. Three standard errors plus that pull: 0.05. Pins the API's sign (which tail) and
# its samples axis: either wrong gives k-hat near -1 or a different shape.
KHAT_SAMPLES, KHAT_DATA = 10000, 100


@pytest.mark.parametrize("k", [0.3, 0.6, 0.9])
def test_khat_recovers_a_known_pareto_tail(k):
    rng = np.random.default_rng(0)
    khat = marginal.pareto_khat(torch.as_tensor(k * rng.standard_exponential((KHAT_SAMPLES, KHAT_DATA))))
    assert khat.shape == (KHAT_DATA,) and khat.dtype == torch.float64
    assert khat.mean().item() == pytest.approx(k, abs=0.05)


def test_khat_of_light_tails_is_below_one_half():
    rng = np.random.default_rng(1)
    # log-normal weights (every moment finite; a proposal close to the posterior) and bounded
    # weights (shape -1): one estimate's standard deviation is about 0.06, so 0.5 is far above both
    gaussian = 0.5 * rng.standard_normal((KHAT_SAMPLES, KHAT_DATA))
    bounded = np.log(rng.uniform(size=(KHAT_SAMPLES, KHAT_DATA)))
    for lw in (gaussian, bounded):
        assert marginal.pareto_khat(torch.as_tensor(lw)).max() < 0.5


def test_khat_is_inf_where_no_tail_can_be_fitted():
    # too few samples for a tail of 5, and a tail of equal weights: the same answer on both ArviZ lines
    for lw in (torch.randn(marginal.PSIS_MIN_SAMPLES - 1, 3, dtype=torch.float64), torch.zeros(100, 3, dtype=torch.float64)):
        assert torch.equal(marginal.pareto_khat(lw), torch.full((3,), math.inf, dtype=torch.float64))


def test_chunked_equals_unchunked_with_the_same_seed():
    W, b, decoder = linear_gaussian()
    vae = gaussian_vae(LinearEncoder(0.3 * torch.randn(LATENT, D), torch.zeros(LATENT), torch.ones(LATENT)), decoder)
    x = draw_gaussian(W, b, 8)
    # 8 data x 2 latents = 16 normals per sample: every chunk then reads the same stretch of torch's
    # RNG stream as the matching rows of one big draw (its CPU kernel fills blocks of 16)
    whole = estimate_log_px(vae, x, num_samples=100, seed=3)
    for chunk in (7, 33, 100):
        parts = estimate_log_px(vae, x, num_samples=100, chunk_size=chunk, seed=3)
        for a, b_ in ((whole.log_px, parts.log_px), (whole.elbo, parts.elbo), (whole.ess, parts.ess)):
            assert torch.allclose(a, b_, atol=1e-5)
    other_seed = estimate_log_px(vae, x, num_samples=100, seed=4)
    assert not torch.allclose(whole.log_px, other_seed.log_px, atol=1e-5)


def test_out_of_device_memory_halves_the_chunk_and_still_draws_k(monkeypatch):
    W, b, decoder = linear_gaussian()
    vae = gaussian_vae(LinearEncoder(0.3 * torch.randn(LATENT, D), torch.zeros(LATENT), torch.ones(LATENT)), decoder)
    x = draw_gaussian(W, b, 8)
    fits = estimate_log_px(vae, x, num_samples=100, chunk_size=8, seed=3)
    real, sizes = marginal.log_weights, []

    def small_memory(vae, x, y, k):
        sizes.append(k)
        if k > 8:  # fails before drawing, as an allocation would
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(vae, x, y, k)

    monkeypatch.setattr(marginal, "log_weights", small_memory)
    fallback = estimate_log_px(vae, x, num_samples=100, chunk_size=32, seed=3)
    assert sizes[:3] == [32, 16, 8] and max(sizes[3:]) == 8
    assert torch.equal(fallback.log_px, fits.log_px) and torch.equal(fallback.ess, fits.ess)
    monkeypatch.setattr(marginal, "log_weights", lambda *args: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("simulated")))
    with pytest.raises(UserError, match="out of device memory"):
        estimate_log_px(vae, x, num_samples=10, chunk_size=4)


def test_bad_arguments_are_user_errors():
    vae, _, x = bernoulli_model()
    for kwargs, message in (
        ({"num_samples": 0}, "num_samples"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"batch_size": 0}, "batch_size"),
    ):
        with pytest.raises(UserError, match=message):
            estimate_log_px(vae, x, **kwargs)
    with pytest.raises(UserError, match="shape"):
        estimate_log_px(vae, x[:, :3], num_samples=5)


def test_summary_means_and_standard_errors():
    vae, _, x = bernoulli_model()
    r = estimate_log_px(vae, x[:50], num_samples=30, seed=0)
    s = r.summary()
    assert s["n"] == 50 and s["num_samples"] == 30
    assert s["log_px"] == pytest.approx(r.log_px.mean().item())
    assert s["log_px_stderr"] == pytest.approx(r.log_px.std().item() / math.sqrt(50))
    assert s["gap"] == pytest.approx(s["log_px"] - s["elbo"])
    assert s["khat_frac_above_0_7"] == pytest.approx((r.khat > 0.7).double().mean().item())
    assert 1 <= r.ess.min() and r.ess.max() <= 30


SUMMARY_KEYS = {"n", "num_samples", "log_px", "log_px_stderr", "elbo", "gap", "ess_mean", "khat_max", "khat_frac_above_0_7"}


def test_cli_evaluate_json(trained_run, capsys):
    rc = cli.main(["evaluate", str(trained_run), "--num-samples", "50", "--limit", "20", "--chunk-size", "15", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["n"] == 20 and summary["num_samples"] == 50
    assert summary["log_px"] >= summary["elbo"]
    assert "nats per datum" in out
    rows = (trained_run / "log_px.csv").read_text().splitlines()
    assert rows[0].split(",") == ["index", "label", "log_px", "elbo", "gap", "ess", "khat"] and len(rows) == 21
    assert (trained_run / "diagnostics.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_evaluate_conditional_reports_log_p_x_given_y(trained_cvae_run, capsys):
    assert cli.main(["evaluate", str(trained_cvae_run), "--num-samples", "20", "--limit", "10"]) == 0
    assert "log p(x | y)" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [["--num-samples", "0"], ["--limit", "-1"]])
def test_cli_evaluate_bad_arguments(trained_run, capsys, flags):
    assert cli.main(["evaluate", str(trained_run), *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flags[0] in err
