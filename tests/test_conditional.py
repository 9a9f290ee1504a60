"""The conditional VAE: label checks, class-conditional generation (CLI and Python), and that a
trained model's log p(x | y) prefers the true label."""

import numpy as np
import pyro
import pytest
import torch

from helpers import readable_png, record_grids
from pyro_vae import VAE, data
from pyro_vae.cli import main
from pyro_vae.errors import UserError
from pyro_vae.marginal import estimate_log_px
from pyro_vae.objectives import make_objective
from pyro_vae.run import load_run, write_run_figures


def small_cvae(**kwargs):
    return VAE(input_dim=784, latent_dim=4, encoder={"hidden": [16]}, decoder={"hidden": [16]}, num_classes=10, **kwargs)


def generate(run, tmp_path, name, *flags):
    """``pyro-vae generate run *flags --out tmp_path/name`` -> the npz's (images, labels)."""
    assert main(["generate", str(run), *flags, "--out", str(tmp_path / name)]) == 0
    arrays = np.load(tmp_path / name)
    return arrays["images"], arrays["labels"]


# -- labels are checked ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "y, expected",
    [
        (torch.tensor([0, 1, 2, 3, 10]), "labels must lie in 0..9, got values from 0 to 10"),
        (torch.tensor([0, 1, -1, 3, 4]), "labels must lie in 0..9, got values from -1 to 4"),
        (None, "this VAE is conditional"),
        (torch.tensor([0, 1, 2]), "labels must have shape (5,)"),
        (torch.zeros(5, 1, dtype=torch.long), "labels must have shape (5,)"),
        (torch.zeros(5), "labels must be integers"),
    ],
    ids=["above range", "negative", "missing", "too few", "extra dimension", "floats"],
)
def test_bad_labels_are_one_line_user_errors(y, expected):
    vae = small_cvae()
    for call in (lambda: vae.sample(5, y=y), lambda: estimate_log_px(vae, torch.zeros(5, 784), y, num_samples=2)):
        with pytest.raises(UserError) as info:
            call()
        assert expected in str(info.value) and "\n" not in str(info.value)


def test_model_and_guide_without_labels_are_a_user_error():
    vae = small_cvae()
    for program in (vae.model, vae.guide):
        with pytest.raises(UserError, match="this VAE is conditional"):
            program(torch.zeros(3, 784))


@pytest.mark.parametrize("digit", ["12", "-1", "seven", "\u0663"])  # U+0663 is an Arabic-Indic 3
def test_cli_generate_bad_digit_exits_2_with_one_line(trained_cvae_run, tmp_path, capsys, digit):
    assert main(["generate", str(trained_cvae_run), "--digit", digit, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--digit must be 'all' or a class from 0 to 9" in err[0]
    assert not (tmp_path / "x.png").exists()


def test_cli_same_style_needs_digit_all(trained_cvae_run, tmp_path, capsys):
    assert main(["generate", str(trained_cvae_run), "--digit", "7", "--same-style", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use it with --digit all" in err[0]


def test_digit_on_an_unconditional_run_is_a_user_error(trained_run, tmp_path, capsys):
    assert main(["generate", str(trained_run), "--digit", "3", "--out", str(tmp_path / "x.png")]) == 2
    assert "need a conditional run" in capsys.readouterr().err


# -- every prior, likelihood and objective conditions on y -----------------------------------


@pytest.mark.parametrize(
    "prior, likelihood, objective",
    [
        ("normal", "bernoulli", "elbo"),
        ("learned_normal", "continuous_bernoulli", "mean_field"),
        ({"type": "mixture", "components": 3}, "gaussian", "iwae"),
        ({"type": "vamp", "components": 20}, "laplace", "elbo"),
    ],
)
def test_the_loss_depends_on_the_labels_for_every_prior_likelihood_objective(prior, likelihood, objective):
    vae = small_cvae(prior=prior, likelihood=likelihood)
    loss = make_objective(objective, num_particles=3)
    x = torch.bernoulli(torch.full((6, 784), 0.3))
    y = torch.arange(6)

    def value(labels):
        pyro.set_rng_seed(1)  # the same draws of z, so only the labels differ
        return loss.differentiable_loss(vae.model, vae.guide, x, labels).item()

    same, shifted = value(y), value((y + 1) % 10)
    assert np.isfinite(same) and np.isfinite(shifted) and same != shifted


# -- generation --------------------------------------------------------------------------------


def test_digit_7_gives_five_sevens(trained_cvae_run, tmp_path):
    images, labels = generate(trained_cvae_run, tmp_path, "s.npz", "--digit", "7", "--n", "5")
    assert images.shape == (5, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    assert labels.dtype == np.int64 and labels.tolist() == [7] * 5


def test_digit_all_gives_one_row_per_class(trained_cvae_run, tmp_path, monkeypatch):
    images, labels = generate(trained_cvae_run, tmp_path, "all.npz", "--digit", "all", "--n", "3")
    assert images.shape == (30, 28, 28)
    assert labels.tolist() == [d for d in range(10) for _ in range(3)]
    drawn = record_grids(monkeypatch)
    assert main(["generate", str(trained_cvae_run), "--digit", "all", "--n", "4", "--out", str(tmp_path / "all.png")]) == 0
    assert [(grid["n"], grid["nrow"]) for grid in drawn] == [(40, 4)]  # 4 columns, 10 rows
    assert drawn[0]["row_labels"] == [f"label {d}" for d in range(10)]
    assert readable_png(tmp_path / "all.png", min_width=300)


def test_generation_is_reproducible_with_a_seed(trained_cvae_run, tmp_path):
    first, _ = generate(trained_cvae_run, tmp_path, "a.npz", "--digit", "all", "--n", "2", "--seed", "3")
    again, _ = generate(trained_cvae_run, tmp_path, "b.npz", "--digit", "all", "--n", "2", "--seed", "3")
    other, _ = generate(trained_cvae_run, tmp_path, "c.npz", "--digit", "all", "--n", "2", "--seed", "4")
    assert np.array_equal(first, again)
    assert np.abs(first - other).max() > 0.1


def test_same_style_shares_one_z_per_column(trained_cvae_run, tmp_path):
    n, seed = 4, 5
    images, labels = generate(trained_cvae_run, tmp_path, "same.npz", "--digit", "all", "--same-style", "--n", str(n), "--seed", str(seed))
    assert labels.tolist() == [d for d in range(10) for _ in range(n)]
    grid = torch.from_numpy(images).reshape(10, n, 784)
    _, vae, _ = load_run(trained_cvae_run)
    pyro.set_rng_seed(seed)
    z = vae.prior(vae.encoder).sample((n,))
    for j in range(n):
        column = vae.sample(10, y=torch.arange(10), z=z[j].repeat(10, 1))
        assert torch.allclose(grid[:, j], column, atol=1e-6)
    # the label changes the image within a column and the style within a row (a bug would make them equal)
    assert (grid[0, 0] - grid[1, 0]).abs().max() > 1e-3 and (grid[0, 0] - grid[0, 1]).abs().max() > 1e-3


def test_python_sample_takes_an_int_or_a_label_per_image(trained_cvae_run):
    _, vae, _ = load_run(trained_cvae_run)
    z = torch.randn(3, vae.latent_dim)
    assert torch.equal(vae.sample(3, y=7, z=z), vae.sample(3, y=torch.tensor([7, 7, 7]), z=z))
    assert vae.sample(3, y=torch.tensor([1, 2, 3])).shape == (3, 784)


def test_a_conditional_runs_samples_png_is_the_all_digits_grid(trained_cvae_run, tmp_path, monkeypatch):
    cfg, vae, _ = load_run(trained_cvae_run)
    drawn = record_grids(monkeypatch)
    write_run_figures(tmp_path, vae, data.load_dataset(cfg), [])
    assert (drawn[0]["name"], drawn[0]["n"], drawn[0]["nrow"]) == ("samples.png", 80, 8)  # 8 columns, 10 rows
    assert drawn[0]["row_labels"] == [f"label {d}" for d in range(10)]
    assert readable_png(trained_cvae_run / "samples.png")


# -- the model uses the labels ---------------------------------------------------------------


def test_log_p_x_given_the_true_label_beats_a_wrong_label(trained_cvae_run):
    cfg, vae, _ = load_run(trained_cvae_run)
    test = data.load_dataset(cfg).test.head(200)
    wrong = (test.y + torch.randint(1, 10, test.y.shape)) % 10  # each image gets some other label
    # K = 20 is plenty for a comparison: both labels get the same estimator (the 2-epoch fixture
    # prefers the true label by about 0.6 nats per image, some 8 standard errors)
    true_lp = estimate_log_px(vae, test.x, test.y, num_samples=20, seed=0).log_px
    wrong_lp = estimate_log_px(vae, test.x, wrong, num_samples=20, seed=0).log_px
    diff = true_lp - wrong_lp
    # paired over the same images: the mean advantage must stand well clear of its noise
    assert diff.mean() > 3 * diff.std() / len(diff) ** 0.5
    assert (diff > 0).double().mean() > 0.5  # and most images prefer their own label
