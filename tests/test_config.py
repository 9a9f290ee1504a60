"""Config: TOML files, --set overrides, validation messages that name the key and the choices."""

import dataclasses
from pathlib import Path

import pytest

from pyro_vae import config
from pyro_vae.errors import UserError

EXAMPLES = sorted(Path(__file__).resolve().parents[1].glob("examples/configs/*.toml"))


def test_defaults_round_trip_through_toml():
    cfg = config.load()
    assert config.loads(cfg.to_toml()) == cfg


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    cfg = config.load(path)
    assert config.loads(cfg.to_toml()) == cfg


def test_iwae_paper_example_is_the_paper_model():
    cfg = config.load(next(p for p in EXAMPLES if p.name == "mnist_vae.toml"))
    m, t = cfg.model, cfg.train
    assert (m.latent_dim, m.encoder.hidden, m.decoder.hidden) == (50, [200, 200], [200, 200])
    assert (m.encoder.activation, m.likelihood, cfg.data.binarize) == ("tanh", "bernoulli", "dynamic")
    assert (t.batch_size, t.lr, t.objective) == (100, 1e-3, "mean_field")


@pytest.mark.parametrize(
    "item, key, expected",
    [
        ("train.epochs=5", ("train", "epochs"), 5),
        ("train.lr=3e-4", ("train", "lr"), 3e-4),
        ("train.lr=1", ("train", "lr"), 1.0),
        ("model.prior=mixture", ("model", "prior"), "mixture"),
        ('model.prior={type="mixture", components=10}', ("model", "prior"), {"type": "mixture", "components": 10}),
        ("model.conditional=true", ("model", "conditional"), True),
        ("model.encoder.hidden=[400, 100]", ("model", "encoder"), None),
        ("data.binarize=static", ("data", "binarize"), "static"),
    ],
)
def test_set_reads_toml_literals_and_bare_words(item, key, expected):
    cfg = config.load(None, [item])
    value = getattr(getattr(cfg, key[0]), key[1])
    if key[1] == "encoder":
        assert value.hidden == [400, 100]
    else:
        assert value == expected and type(value) is type(expected)


def test_set_into_a_named_prior_makes_it_a_table():
    cfg = config.load(None, ["model.prior=vamp", "model.prior.components=50"])
    assert cfg.model.prior == {"type": "vamp", "components": 50}


def test_set_overrides_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("seed = 3\n[train]\nepochs = 7\n")
    cfg = config.load(path, ["train.epochs=2"])
    assert (cfg.seed, cfg.train.epochs, cfg.train.batch_size) == (3, 2, 100)


@pytest.mark.parametrize(
    "items, words",
    [
        (["train.epoch=5"], ["unknown config key 'train.epoch'", "train.epochs", "train.batch_size"]),
        (["colour=red"], ["unknown config key 'colour'", "seed", "train"]),
        (["model.prior=cauchy"], ["unknown prior 'cauchy'", "normal", "learned_normal", "mixture", "vamp"]),
        (["model.likelihood=poisson"], ["unknown likelihood 'poisson'", "bernoulli", "continuous_bernoulli", "gaussian", "laplace"]),
        (["train.objective=elbow"], ["train.objective", "elbo", "mean_field", "iwae"]),
        (["data.binarize=yes"], ["data.binarize", "dynamic", "static", "none"]),
        (["train.device=tpu"], ["train.device", "auto", "cpu", "cuda"]),
        (["model.latent_dim=-3"], ["model.latent_dim must be at least 1"]),
        (["train.batch_size=0"], ["train.batch_size must be at least 1"]),
        (["train.lr=0"], ["train.lr must be a finite positive number, got 0.0"]),
        (["train.num_particles=0"], ["train.num_particles must be at least 1"]),
        (["train.epochs=ten"], ["train.epochs must be an integer"]),
        (["model.encoder.hidden=[]"], ["model.encoder.hidden"]),
        (["model.encoder.type=rnn"], ["model.encoder.type", "mlp", "conv"]),
        (["train.epochs"], ["--set expects key=value"]),
        (['model.prior={type="mixture", k=3}'], ["unknown parameter 'k'", "components"]),
    ],
)
def test_bad_values_name_the_key_and_the_choices(items, words):
    with pytest.raises(UserError) as info:
        config.load(None, items)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_toml_syntax_error_gives_the_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("seed = 1\n[train]\nepochs = = 3\n")
    with pytest.raises(UserError, match=r"line 3"):
        config.load(path)


def test_every_key_of_the_design_exists():
    cfg = config.load()
    for dotted in ("seed", "data.dir", "data.binarize", "model.latent_dim", "model.prior", "model.likelihood",
                   "model.conditional", "model.encoder.hidden", "model.decoder.hidden", "train.epochs",
                   "train.max_steps", "train.batch_size", "train.lr", "train.objective", "train.num_particles",
                   "train.device"):
        node = cfg
        for part in dotted.split("."):
            assert part in {f.name for f in dataclasses.fields(node)}, dotted
            node = getattr(node, part)


def test_every_key_is_in_the_configuration_reference():
    reference = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()

    def keys(node, prefix=""):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                yield from keys(value, prefix + f.name + ".")
            else:
                yield prefix + f.name

    missing = [key for key in keys(config.load()) if f"`{key}`" not in reference]
    assert not missing
