"""Regression guards for issue 11's causes of poor results, checked in seconds: the decoder's
data-dependent output bias, and a VampPrior that uses its latents instead of collapsing."""

import pytest
import torch

from helpers import small_config
from pyro_vae import VAE, UserError
from pyro_vae.data import load_dataset
from pyro_vae.explore import active_units
from pyro_vae.files import save_tensors
from pyro_vae.run import build_vae, load_checkpoint, train_run
from pyro_vae.train import fit


def mnist_vae(data_dir, *overrides):
    cfg = small_config(data_dir, *overrides)
    ds = load_dataset(cfg)
    return cfg, ds, build_vae(cfg, ds.input_dim, None)


def logit(p):
    p = p.clamp(1e-3, 1 - 1e-3)
    return torch.log(p / (1 - p))


def test_output_bias_starts_at_the_logit_of_the_mean_training_pixel(data_dir):
    _, ds, vae = mnist_vae(data_dir)
    vae.init_from_data(ds.train.x)
    bias = vae.decoder.net[-1].bias
    assert torch.allclose(bias, logit(ds.train.x.mean(0)), atol=1e-5)
    assert bias.min().item() == pytest.approx(logit(torch.tensor(0.0)).item())  # MNIST's empty corners: clamped, finite


def test_train_run_starts_from_the_data_and_resume_keeps_the_trained_bias(data_dir, tmp_path):
    cfg = small_config(data_dir, "train.epochs=1", "train.max_steps=1", "train.lr=1e-6")
    vae, _ = train_run(cfg, tmp_path, progress=False)
    target = logit(load_dataset(cfg).train.x.mean(0))
    assert torch.allclose(vae.decoder.net[-1].bias, target, atol=1e-4)  # one step of lr 1e-6 moves it by about 1e-6
    with torch.no_grad():
        vae.decoder.net[-1].bias.add_(1.0)
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    payload["model"] = vae.state_dict()
    save_tensors(tmp_path / "checkpoint.pt", payload)
    resumed, _ = train_run(small_config(data_dir, "train.epochs=1", "train.max_steps=1", "train.lr=1e-6"), tmp_path, resume=True, progress=False)
    assert torch.allclose(resumed.decoder.net[-1].bias, target + 1.0, atol=1e-4)


def test_init_bias_default_keeps_pytorchs_initialization(data_dir):
    _, ds, vae = mnist_vae(data_dir, "model.decoder.init_bias=default")
    before = vae.decoder.net[-1].bias.clone()
    vae.init_from_data(ds.train.x)
    assert torch.equal(vae.decoder.net[-1].bias, before)


def test_a_loaded_or_initialized_vae_is_not_initialized_again(data_dir):
    _, ds, vae = mnist_vae(data_dir)
    trained = vae.state_dict()
    vae.load_state_dict(trained)
    vae.init_from_data(ds.train.x)
    assert torch.equal(vae.decoder.net[-1].bias, trained["decoder.net.2.bias"])
    _, _, fresh = mnist_vae(data_dir)
    fresh.init_from_data(ds.train.x)
    fresh.init_from_data(torch.ones_like(ds.train.x))
    assert torch.allclose(fresh.decoder.net[-1].bias, logit(ds.train.x.mean(0)), atol=1e-5)


def test_location_scale_likelihood_starts_at_the_mean_pixel():
    vae = VAE(input_dim=6, latent_dim=2, likelihood="gaussian", decoder={"hidden": [4]})
    x = torch.rand(50, 6)
    vae.init_from_data(x)
    assert torch.allclose(vae.decoder.net[-1].bias, x.mean(0))


def test_conv_decoder_starts_at_the_overall_mean_pixel():
    vae = VAE(input_dim=16, latent_dim=2, encoder={"type": "conv", "channels": [2, 4]}, decoder={"type": "conv", "channels": [2, 4]})
    x = torch.bernoulli(torch.full((40, 16), 0.25))
    vae.init_from_data(x)
    assert vae.decoder.deconv[-1].bias.item() == pytest.approx(logit(x.mean()).item(), abs=1e-5)


def test_a_decoder_of_your_own_is_left_alone():
    decoder = torch.nn.Linear(2, 6)
    before = decoder.bias.clone()
    VAE(input_dim=6, latent_dim=2, decoder=decoder).init_from_data(torch.bernoulli(torch.full((10, 6), 0.5)))
    assert torch.equal(decoder.bias, before)


def test_unknown_init_bias_names_the_choices(data_dir):
    with pytest.raises(UserError, match="model.decoder.init_bias = 'zero' is not valid; choose one of: data, default"):
        small_config(data_dir, "model.decoder.init_bias=zero")


def test_vamp_prior_uses_its_latents_after_a_few_hundred_steps(data_dir):
    """The VampPrior used to collapse: q(z|x) matched p(z) for every x, no dimension carried
    information and KL(q || p) was about 0. Fixed seed and step count, no wall clock."""
    cfg, ds, vae = mnist_vae(data_dir, 'model.prior={type="vamp", components=50}', "train.epochs=15")
    vae.init_from_data(ds.train.x)
    fit(vae, ds, cfg, progress=False)
    test = ds.test.x
    assert active_units(vae.encode(test)[0])[0] >= 4  # of 8; the collapsed prior left 2 or 3 barely moving
    assert kl_per_datum(vae, test) > 5.0  # the collapsed prior: under 0.1 nats


@torch.no_grad()
def kl_per_datum(vae, x, num_samples=20):
    """Monte Carlo KL(q(z|x) || p(z)) averaged over ``x``, in nats."""
    loc, scale = vae.encoder(x)
    q = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    z = q.sample((num_samples,))
    return (q.log_prob(z) - vae.prior(vae.encoder).log_prob(z)).mean().item()
