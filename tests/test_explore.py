"""`pyro-vae encode` and `pyro-vae explore`: the codes written, the figures drawn, and the two
numbers explore reports (active units, per-dimension KL) checked against hand-made cases."""

import json

import numpy as np
import pyro.distributions as dist
import pytest
import torch

from helpers import readable_png, small_config
from pyro_vae import config, data
from pyro_vae.cli import main
from pyro_vae.explore import active_units, kl_per_dim, monte_carlo_kl
from pyro_vae.run import load_run, train_run

FIGURES = ["interpolations.png", "latent_map.png", "traversals.png"]


def encode(run, tmp_path, *flags):
    assert main(["encode", str(run), "--out", str(tmp_path / "codes.npz"), *flags]) == 0
    return dict(np.load(tmp_path / "codes.npz"))


def explore_json(run, out, capsys):
    assert main(["explore", str(run), "--out", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# -- encode -----------------------------------------------------------------------------------


def test_encode_writes_the_encoders_loc_and_scale_with_labels(trained_run, tmp_path):
    arrays = encode(trained_run, tmp_path, "--limit", "50")
    assert sorted(arrays) == ["labels", "loc", "scale"]
    assert arrays["loc"].shape == arrays["scale"].shape == (50, 8)
    assert arrays["loc"].dtype == arrays["scale"].dtype == np.float32
    assert arrays["labels"].shape == (50,) and arrays["labels"].dtype == np.int64
    cfg, vae, _ = load_run(trained_run)
    test = data.load_dataset(cfg).test.head(50)
    with torch.no_grad():
        loc, scale = vae.encoder(test.x)
    assert torch.equal(torch.from_numpy(arrays["loc"]), loc) and torch.equal(torch.from_numpy(arrays["scale"]), scale)
    assert torch.equal(vae.encode(test.x)[0], loc)
    assert arrays["labels"].tolist() == test.y.tolist()


def test_encode_train_split_is_binarized_once_and_reproducibly(trained_run, tmp_path):
    first = encode(trained_run, tmp_path, "--split", "train", "--limit", "20")
    again = encode(trained_run, tmp_path, "--split", "train", "--limit", "20")
    assert first["loc"].shape == (20, 8) and np.array_equal(first["loc"], again["loc"])


def test_a_conditional_run_encodes_with_the_true_label(trained_cvae_run, tmp_path):
    arrays = encode(trained_cvae_run, tmp_path, "--limit", "10")
    _, vae, _ = load_run(trained_cvae_run)
    x = data.load_dataset(load_run(trained_cvae_run)[0]).test.head(10).x
    loc, _ = vae.encode(x, torch.from_numpy(arrays["labels"]))
    assert torch.equal(torch.from_numpy(arrays["loc"]), loc)


def test_data_without_labels_give_no_labels_key(tmp_path):
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, (np.random.default_rng(0).random((40, 16)) > 0.5).astype(np.float32))
    overrides = [f'data.path="{pixels}"', "data.binarize=none", "model.latent_dim=2", "model.encoder.hidden=[8]",
                 "model.decoder.hidden=[8]", "train.batch_size=10", "train.epochs=1", "train.device=cpu", "train.compile=off"]
    train_run(config.load(None, overrides), tmp_path / "run", progress=False)
    assert sorted(encode(tmp_path / "run", tmp_path)) == ["loc", "scale"]


# -- the numbers ------------------------------------------------------------------------------


def test_active_units_count_the_dimensions_whose_mean_moves():
    n = 1000
    loc = torch.stack([torch.randn(n), torch.full((n,), 3.0), 0.03 * torch.randn(n), 0.5 * torch.randn(n)], 1)
    count, variances = active_units(loc)
    assert count == 2  # dimension 1 is held constant; dimension 2 varies by 0.0009 < 0.01
    assert variances[1] == 0 and variances[2] < 0.01 < variances[3]


def posterior(n=400, d=3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, d, generator=g), 0.1 + torch.rand(n, d, generator=g)


def test_closed_form_kl_matches_monte_carlo(trained_run):
    cfg, vae, _ = load_run(trained_run)
    loc, scale = vae.encode(data.load_dataset(cfg).test.head(200).x)
    prior = vae.prior_distribution()
    kl, stderr, method = kl_per_dim(prior, loc, scale)
    assert method == "closed_form" and stderr is None
    mc, mc_stderr = monte_carlo_kl(loc, scale, prior.base_dist.log_prob, num_samples=64)
    assert ((kl - mc).abs() < 4 * mc_stderr + 1e-3).all(), (kl, mc, mc_stderr)


def test_mixture_marginals_are_exact():
    """A mixture of two copies of one Gaussian is that Gaussian: the Monte Carlo KL through the
    mixture's marginals must agree with the closed form."""
    loc, scale = posterior()
    m, s = torch.tensor([0.5, -1.0, 0.0]), torch.tensor([1.0, 2.0, 0.5])
    gaussian = dist.Normal(m, s).to_event(1)
    mixture = dist.MixtureSameFamily(dist.Categorical(logits=torch.tensor([0.3, -0.2])), dist.Normal(m.expand(2, 3), s.expand(2, 3)).to_event(1))
    exact, _, _ = kl_per_dim(gaussian, loc, scale)
    kl, stderr, method = kl_per_dim(mixture, loc, scale)
    assert method == "monte_carlo"
    assert ((kl - exact).abs() < 4 * stderr).all(), (kl, exact, stderr)


def test_a_prior_without_known_marginals_falls_back_to_a_kernel_density():
    loc, scale = posterior()
    prior = dist.MultivariateNormal(torch.zeros(3), torch.eye(3))  # the standard normal, not seen as factorized
    exact, _, _ = kl_per_dim(dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1), loc, scale)
    kl, stderr, method = kl_per_dim(prior, loc, scale)
    assert method == "monte_carlo_kde" and stderr.shape == (3,)
    assert ((kl - exact).abs() < 0.1).all(), (kl, exact)  # the kernel's smoothing biases it a little


# -- explore ----------------------------------------------------------------------------------


def test_explore_writes_the_figures_and_a_json_line(trained_run, tmp_path, capsys):
    summary = explore_json(trained_run, tmp_path / "figures", capsys)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == FIGURES
    for name in FIGURES:
        assert readable_png(tmp_path / "figures" / name), name
    assert isinstance(summary["active_units"], int) and 0 <= summary["active_units"] <= 8
    assert len(summary["kl_per_dim"]) == 8 and summary["kl_method"] == "closed_form" and "kl_stderr" not in summary
    kl = summary["kl_per_dim"]
    assert summary["dimensions_drawn"] == sorted(range(8), key=lambda j: -kl[j])  # the most used first
    assert summary["figures"] == FIGURES and summary["n"] == 500


@pytest.mark.parametrize("overrides", [
    ("model.conditional=true", 'model.prior={type="vamp", components=20}'),
    ('model.prior={type="mixture", components=3}', 'model.likelihood={type="gaussian", scale=0.5}'),
], ids=["conditional vamp", "mixture gaussian"])
def test_explore_a_2d_latent_draws_the_manifold_for_any_prior(data_dir, tmp_path, capsys, overrides):
    cfg = small_config(data_dir, "model.latent_dim=2", "data.limit=500", "data.test_limit=200", "train.epochs=1", *overrides)
    train_run(cfg, tmp_path / "run", progress=False)
    summary = explore_json(tmp_path / "run", tmp_path / "run", capsys)
    for name in FIGURES + ["manifold.png"]:
        assert readable_png(tmp_path / "run" / name), name
    assert summary["kl_method"] == "monte_carlo" and len(summary["kl_stderr"]) == 2
    assert all(np.isfinite(summary["kl_per_dim"])) and summary["dimensions_drawn"] in ([0, 1], [1, 0])


def test_explore_a_run_whose_test_set_is_one_image(data_dir, tmp_path, capsys):
    train_run(small_config(data_dir, "data.limit=300", "data.test_limit=1", "train.epochs=1"), tmp_path / "run", progress=False)
    summary = explore_json(tmp_path / "run", tmp_path / "figures", capsys)
    assert summary["n"] == 1 and summary["active_units"] == 0  # one image: no posterior mean varies
    assert readable_png(tmp_path / "figures" / "latent_map.png") and "interpolations.png" not in summary["figures"]
