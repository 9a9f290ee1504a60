"""Stacked M1+M2 (``data.features``): a run trained on another run's posterior means, shown
through that run's decoder."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from helpers import assert_same_weights, small_config

from pyro_vae import config, data
from pyro_vae.cli import main
from pyro_vae.errors import UserError
from pyro_vae.evaluate import evaluate_run
from pyro_vae.features import FeatureMap
from pyro_vae.generate import draw
from pyro_vae.model import VAE
from pyro_vae.run import train_run
from pyro_vae.runfolder import feature_map, load_dataset, load_run


def features_config(feature_run, *overrides):
    return config.load(None, [
        f'data.features="{feature_run}"', "data.binarize=none", "model.likelihood=gaussian", "model.conditional=true",
        "data.labelled=20", "data.limit=300", "data.test_limit=50", "model.latent_dim=4", "model.encoder.hidden=[32]",
        "model.decoder.hidden=[32]", "model.classifier.hidden=[32]", "train.epochs=2", "train.batch_size=50",
        "train.labelled_batch_size=10", "train.device=cpu", "train.compile=off", *overrides])


@pytest.fixture(scope="module")
def feature_run(trained_run, tmp_path_factory):
    """A copy of the session's small unconditional MNIST run (M1): this module evaluates it, which
    writes into its folder."""
    out = tmp_path_factory.mktemp("m1") / "run"
    shutil.copytree(trained_run, out)
    return out


@pytest.fixture(scope="module")
def stacked_run(feature_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("stacked")
    train_run(features_config(feature_run), out, progress=False)
    return out


def test_the_codes_are_the_posterior_means_on_the_active_units_and_decode_with_the_others_at_their_mean():
    vae = VAE(input_dim=784, latent_dim=6, encoder={"hidden": [16]}, decoder={"hidden": [16]})
    with torch.no_grad():  # dimensions 0 and 1 of the posterior mean: the same number for every image
        vae.encoder.net[-1].weight[:2] = 0
        vae.encoder.net[-1].bias[:2] = 0.3
    pixels = (torch.rand(200, 784) > 0.5).float()
    images = data.Dataset(data.Split(pixels[:150], torch.arange(150) % 10), data.Split(pixels[150:], torch.arange(50) % 10), (28, 28), 10)
    fmap = FeatureMap(vae, images, "m1")
    means = vae.encode(pixels)[0]
    assert fmap.active.tolist() == [False, False, True, True, True, True]
    codes = fmap.codes
    assert codes.input_dim == 4 and codes.image_shape == (1, 4) and codes.feature_map is fmap
    assert torch.allclose(codes.train.x, means[:150, 2:], atol=1e-6) and torch.allclose(codes.test.x, means[150:, 2:], atol=1e-6)
    assert torch.equal(codes.test.y, images.test.y)
    z = torch.cat([torch.full((3, 2), 0.3), codes.test.x[:3]], 1)
    pictures, shape = codes.pictures(codes.test.x[:3])
    assert shape == (28, 28) and torch.allclose(pictures, vae.decode(z), atol=1e-6)


def test_a_run_on_features_sees_the_feature_runs_codes_of_its_images_as_it_saw_them(feature_run):
    m1_cfg, m1, _ = load_run(feature_run)
    ds = load_dataset(features_config(feature_run))
    images = data.load_dataset(config.load(None, [f'data.dir="{m1_cfg.data.dir}"']))  # every MNIST image, binarized as M1's run
    train = data.fixed_train_split(images, m1_cfg.data.binarize, m1_cfg.seed)
    fmap = FeatureMap(m1, dataclasses.replace(images, train=train), "m1")
    assert ds.input_dim == fmap.codes.input_dim and ds.num_classes == 10 and ds.feature_map is not None
    assert torch.allclose(ds.train.x, fmap.codes.train.x[:300]) and torch.allclose(ds.test.x, fmap.codes.test.x[:50])
    assert torch.allclose(ds.test.x, fmap.encode(images.test.x[:50]))
    assert torch.equal(ds.train.y, train.y[:300]) and torch.equal(ds.test.y, images.test.y[:50])
    assert int(ds.train.labelled.sum()) == 20


def test_generate_draws_features_and_shows_them_through_the_feature_runs_decoder(stacked_run, feature_run, tmp_path):
    assert main(["generate", str(stacked_run), "--digit", "3", "--n", "4", "--out", str(tmp_path / "g.npz")]) == 0
    arrays = np.load(tmp_path / "g.npz")
    assert arrays["images"].shape == (4, 28, 28) and arrays["labels"].tolist() == [3] * 4
    _, vae, _ = load_run(stacked_run)
    codes, _, _ = draw(vae, 4, "3", False, 0)
    assert np.allclose(arrays["images"].reshape(4, -1), feature_map(features_config(feature_run)).decode(codes).numpy(), atol=1e-6)
    assert (stacked_run / "samples.png").exists() and (stacked_run / "reconstructions.png").exists()


def test_evaluate_reports_log_p_of_the_features_and_compare_keeps_it_apart_from_log_p_x(stacked_run, feature_run, capsys):
    assert main(["evaluate", str(stacked_run), "--num-samples", "3", "--limit", "20", "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["quantity"] == "log p(features)" and 0 <= summary["accuracy"] <= 1
    assert "log p(features), y summed out" in out
    evaluate_run(feature_run, num_samples=3, limit=20)
    capsys.readouterr()
    assert main(["compare", str(feature_run), str(stacked_run)]) == 2
    assert "log p(features)" in capsys.readouterr().err


def test_a_stacked_run_resumes_bitwise(stacked_run, feature_run, tmp_path):
    train_run(features_config(feature_run, "train.epochs=1"), tmp_path / "resumed", progress=False)
    resumed, _ = train_run(features_config(feature_run), tmp_path / "resumed", resume=True, progress=False)
    _, straight, _ = load_run(stacked_run)
    assert_same_weights(straight, resumed)


def test_a_retrained_feature_run_is_refused_as_other_data(data_dir, tmp_path):
    m1 = tmp_path / "m1"
    train_run(small_config(data_dir, "train.epochs=1", "data.limit=500"), m1, progress=False)
    train_run(features_config(m1, "train.epochs=1"), tmp_path / "stacked", progress=False)
    train_run(small_config(data_dir, "train.epochs=1", "data.limit=500", "seed=1"), m1, overwrite=True, progress=False)
    with pytest.raises(UserError, match="are not the data .* was trained on"):
        evaluate_run(tmp_path / "stacked", num_samples=2, limit=5)


def test_a_run_on_a_stacked_runs_codes_is_shown_through_every_run_below(feature_run, tmp_path):
    """Three levels: images -> the feature run's codes -> an unconditional run's codes of those."""
    middle_cfg = config.load(None, [
        f'data.features="{feature_run}"', "data.binarize=none", "model.likelihood=gaussian", "data.limit=300", "data.test_limit=50",
        "model.latent_dim=4", "model.encoder.hidden=[32]", "model.decoder.hidden=[32]", "train.epochs=1", "train.device=cpu", "train.compile=off"])
    train_run(middle_cfg, tmp_path / "middle", progress=False)
    train_run(features_config(tmp_path / "middle", "train.epochs=1"), tmp_path / "top", progress=False)
    ds = load_dataset(features_config(tmp_path / "middle"))
    fmap, below = ds.feature_map, feature_map(middle_cfg)
    assert ds.input_dim == fmap.active.sum() <= 4 and fmap.image_shape == (28, 28)
    z = fmap.fill.repeat(3, 1)
    z[:, fmap.active] = ds.test.x[:3]
    pictures, shape = ds.pictures(ds.test.x[:3])
    assert shape == (28, 28) and torch.allclose(pictures, below.decode(fmap.vae.decode(z)), atol=1e-6)
    assert main(["generate", str(tmp_path / "top"), "--digit", "1", "--n", "2", "--out", str(tmp_path / "g.npz")]) == 0
    assert np.load(tmp_path / "g.npz")["images"].shape == (2, 28, 28)
