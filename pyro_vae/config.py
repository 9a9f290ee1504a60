"""Experiment configuration: a dataclass schema (every key has a default), read from TOML,
overridden with ``--set key.sub=value`` and validated with errors that name the key and the
valid choices.
"""

import dataclasses
import math
import sys
from dataclasses import dataclass, field

import tomli_w
import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import noise, sizes, tracking
from .errors import UserError
from .files import read_user_file
from .guides import GUIDES
from .layers import LAYERS, layer_key, layer_spec
from .likelihoods import LIKELIHOODS
from .networks import ACTIVATIONS, INIT_BIASES, NETWORK_TYPES
from .objectives import ENUMERATION_OBJECTIVES, make_objective
from .objectives import OBJECTIVES as OBJECTIVE_REGISTRY
from .priors import PRIORS
from .registry import as_float32

BINARIZATIONS = ("dynamic", "static", "none")
# the built-in objectives (pyro_vae.objectives registers them; a registered one of your own is valid too)
OBJECTIVES = tuple(OBJECTIVE_REGISTRY.names())
DEVICES = ("auto", "cpu", "cuda")
NAN_POLICIES = ("stop", "skip")
COMPILE_MODES = ("auto", "on", "off")
LR_SCHEDULES = ("constant", "burda")


@dataclass
class NetworkConfig:
    type: str = "mlp"
    hidden: list = field(default_factory=lambda: [200, 200])
    channels: list = field(default_factory=lambda: [32, 64])
    activation: str = "tanh"


@dataclass
class DecoderConfig(NetworkConfig):
    init_bias: str = "data"  # "data": output bias at the training data's mean pixel; "default": PyTorch's init


@dataclass
class DataConfig:
    dir: str = ""  # torchvision root for MNIST; "" -> $PYRO_VAE_DATA, else ~/.cache/pyro_vae
    path: str = ""  # a .npy/.npz of the user's own data instead of MNIST
    features: str = ""  # a run folder: train on its encoder's posterior means of its data (stacked M1+M2)
    binarize: str = "dynamic"
    limit: int = 0  # use only the first N training images (0: all)
    test_limit: int = 0  # use only the first N test images (0: all)
    labelled: int = 0  # keep the labels of only N training images, balanced across classes (0: all); semi-supervised


@dataclass
class ModelConfig:
    latent_dim: int = 50
    prior: object = "normal"  # a name or {type = name, ...params}
    likelihood: object = "bernoulli"
    guide: object = "diagonal"  # the posterior family q(z|x): diagonal | full_rank | iaf, or {type = name, ...params}
    conditional: bool = False
    encoder: NetworkConfig = field(default_factory=NetworkConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    classifier: NetworkConfig = field(default_factory=NetworkConfig)  # q(y|x) of a semi-supervised model (data.labelled > 0)
    # stochastic layers above z, bottom-up, each {latent_dim = D, hidden = [...], activation, guide}
    # (sites "z2", "z3", ...); left out (the default), the one-layer VAE
    layers: list = field(default_factory=list)


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int = 0  # stop after this many steps in all (0: no limit)
    batch_size: int = 100
    lr: float = 1e-3
    lr_decay: float = 1.0  # constant schedule: the learning rate is multiplied by this after every epoch
    lr_schedule: str = "constant"  # constant (lr, times lr_decay each epoch) | burda (Burda et al.'s 3^i-epoch stages)
    adam_eps: float = 1e-8  # Adam's epsilon (torch's default; Burda et al. use 1e-4)
    kl_warmup_epochs: int = 0  # the KL term's weight rises linearly from 0 to 1 over these epochs
    # a name or {type = name, ...params}; "mean_field": the ELBO with the analytic KL where one exists
    objective: object = "mean_field"
    num_particles: int = 1
    device: str = "auto"
    compile: str = "auto"  # the training step traced and compiled: auto (where it can be) | on | off
    nan_policy: str = "stop"
    eval_batch_size: int = 1000
    tensorboard: str = ""  # a folder for TensorBoard event files of the per-epoch metrics ("": off)
    mlflow: str = ""  # an MLflow experiment to log the per-epoch metrics and the config into ("": off)
    supervised_weight: float = 50.0  # semi-supervised: alpha, the weight of each known label's -log q(y|x)
    labelled_batch_size: int = 20  # semi-supervised: known labels added to every step, cycled (0: mixed in proportion)


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_toml(self):
        table = dataclasses.asdict(self)
        if not self.model.layers:  # a one-layer config reads as it always has (and as older versions read it)
            del table["model"]["layers"]
        return tomli_w.dumps(table)


def load(path=None, overrides=()):
    """Defaults, then the TOML file at ``path`` (if any), then each ``key=value`` override."""
    raw = {}
    if path is not None:
        raw = parse_toml(read_user_file(path, "config file", "--config"), f"config file {path}")
    for item in overrides:
        apply_override(raw, item)
    return from_dict(raw)


def parse_toml(data, what):
    """The table in TOML ``data`` (bytes or text); ``what`` names the source in the error."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise UserError(f"{what} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); save it as UTF-8, as TOML requires") from None
    try:
        return tomllib.loads(data)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{what} is not valid TOML: {e}") from None


def loads(text, what="config text"):
    """Parse a config from TOML text (as stored in checkpoints)."""
    return from_dict(parse_toml(text, what))


def apply_override(raw, item):
    """Apply ``key.sub=value`` to the nested dict ``raw``; the value is a TOML literal, bare words are strings."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set expects key=value (for example train.epochs=5), got {item!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.get(part, {})
        if isinstance(child, str):  # model.prior.components=10 on prior = "mixture"
            child = {"type": child}
        if not isinstance(child, dict):
            raise UserError(f"cannot set {key}: {'.'.join(parents[: i + 1])} is not a table")
        node[part] = child
        node = child
    node[leaf] = value


def from_dict(raw):
    cfg = _build(Config, raw, "")
    validate(cfg)
    return cfg


def _build(cls, raw, prefix):
    if not isinstance(raw, dict):
        raise UserError(f"{prefix.rstrip('.')} must be a table, got {raw!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise UserError(f"unknown config key '{prefix}{key}'; valid keys: {', '.join(prefix + k for k in known)}")
    values = {}
    for name, f in known.items():
        if name not in raw:
            continue
        value, key = raw[name], prefix + name
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, key + ".")
        else:
            value = _check_type(key, value, default)
        values[name] = value
    return cls(**values)


def _check_type(key, value, default):
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif key == "model.layers":
        return _check_layers(value)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    elif isinstance(default, str) and key in ("model.prior", "model.likelihood", "model.guide", "train.objective"):
        ok = isinstance(value, (str, dict))
    else:
        ok = isinstance(value, str)
    if not ok:
        expected = {bool: "true or false", int: "an integer", float: "a number", list: "a list of integers"}.get(type(default), "a string")
        raise UserError(f"{key} must be {expected}, got {value!r}")
    return value


def _check_layers(value):
    """``model.layers`` as a list of layer tables with their types filled in; each table's
    parameters are checked by its layer class in :func:`validate`."""
    if not isinstance(value, list):
        raise UserError(f"model.layers must be a list of tables such as [{{latent_dim = 50, hidden = [100, 100]}}], got {value!r}")
    if not value:
        raise UserError("model.layers is an empty list; leave the key out for a one-layer VAE, or list the layers above z "
                        "(for example [{latent_dim = 50, hidden = [100, 100]}])")
    return [layer_spec(spec, layer_key(i)) for i, spec in enumerate(value)]


def _choice(key, value, choices):
    if value not in choices:
        raise UserError(f"{key} = {value!r} is not valid; choose one of: {', '.join(choices)}")


def _at_least(key, value, low):
    if value < low:
        raise UserError(f"{key} must be at least {low}, got {value}")


def _positive(key, value, high=math.inf):
    """A finite positive number that float32, the training precision, holds as such (not 0, not inf)."""
    if not (0 < value <= high and math.isfinite(value)):
        bound = f" and at most {high}" if math.isfinite(high) else ""
        raise UserError(f"{key} must be a finite positive number{bound}, got {value}")
    if as_float32(value) == 0:
        raise UserError(f"{key} = {value} is 0 in float32, the precision training runs in; use a value of at least 1e-30")


def validate(cfg):
    """Check ranges and names; raises ``UserError`` naming the key and what would be valid."""
    noise.check_seed(cfg.seed, "seed")
    _choice("data.binarize", cfg.data.binarize, BINARIZATIONS)
    _at_least("data.limit", cfg.data.limit, 0)
    _at_least("data.test_limit", cfg.data.test_limit, 0)
    _at_least("model.latent_dim", cfg.model.latent_dim, 1)
    prior_cls, prior_params = PRIORS.resolve(cfg.model.prior, "model.prior")
    likelihood_cls, likelihood_params = LIKELIHOODS.resolve(cfg.model.likelihood, "model.likelihood")
    guide_cls, guide_params = GUIDES.resolve(cfg.model.guide, "model.guide")
    _at_least("data.labelled", cfg.data.labelled, 0)
    if cfg.data.features:
        if cfg.data.path:
            raise UserError("data.features and data.path both name the data; the feature run's own data are encoded, so leave data.path out")
        if cfg.data.binarize != "none":
            raise UserError(f"data.features gives real-valued codes, which data.binarize = {cfg.data.binarize!r} cannot binarize; set data.binarize = \"none\"")
        if likelihood_cls.support != "real":
            raise UserError(f"data.features gives real-valued codes, which likelihood {likelihood_cls.name!r} cannot model; "
                            "use model.likelihood = \"gaussian\" (or \"laplace\")")
    if cfg.data.labelled and not cfg.model.conditional:
        raise UserError(f"data.labelled = {cfg.data.labelled} trains the semi-supervised conditional model; set model.conditional = true, or data.labelled = 0")
    for part in ("encoder", "decoder", "classifier"):
        net = getattr(cfg.model, part)
        _choice(f"model.{part}.type", net.type, NETWORK_TYPES)
        _choice(f"model.{part}.activation", net.activation, tuple(ACTIVATIONS))
        if not net.hidden or min(net.hidden) < 1:
            raise UserError(f"model.{part}.hidden must list at least one positive layer width, got {net.hidden}")
        if len(net.channels) != 2 or min(net.channels) < 1:
            raise UserError(f"model.{part}.channels must list two positive channel counts, got {net.channels}")
    _choice("model.decoder.init_bias", cfg.model.decoder.init_bias, INIT_BIASES)
    t = cfg.train
    _at_least("train.epochs", t.epochs, 1)
    _at_least("train.max_steps", t.max_steps, 0)
    _at_least("train.kl_warmup_epochs", t.kl_warmup_epochs, 0)
    _at_least("train.batch_size", t.batch_size, 1)
    _at_least("train.num_particles", t.num_particles, 1)
    _at_least("train.eval_batch_size", t.eval_batch_size, 1)
    _positive("train.lr", t.lr)
    _positive("train.lr_decay", t.lr_decay, high=1.0)
    _choice("train.lr_schedule", t.lr_schedule, LR_SCHEDULES)
    _positive("train.adam_eps", t.adam_eps)
    if isinstance(t.objective, str):
        _choice("train.objective", t.objective, OBJECTIVE_REGISTRY.names())
    objective = make_objective(t.objective, t.num_particles)  # its parameters' checks (bounds against num_particles, ...)
    _choice("train.device", t.device, DEVICES)
    _choice("train.compile", t.compile, COMPILE_MODES)
    _choice("train.nan_policy", t.nan_policy, NAN_POLICIES)
    tracking.check_available(t)
    if not 0 <= t.supervised_weight < float("inf"):
        raise UserError(f"train.supervised_weight must be a finite number of at least 0, got {t.supervised_weight}")
    _at_least("train.labelled_batch_size", t.labelled_batch_size, 0)
    if cfg.data.labelled and t.compile == "on":
        raise UserError("train.compile = on cannot compile a semi-supervised run (data.labelled > 0): its label is summed out by "
                        "Pyro's enumeration, which has no static graph; use train.compile = auto or off")
    if cfg.data.labelled and objective.name not in ENUMERATION_OBJECTIVES:
        raise UserError(f"train.objective = {t.objective!r} cannot sum out the unknown labels of a semi-supervised run (data.labelled > 0); "
                        f"choose one of: {', '.join(ENUMERATION_OBJECTIVES)}")
    layers = [LAYERS.resolve(spec, layer_key(i)) for i, spec in enumerate(cfg.model.layers)]
    # sizes no machine holds are refused before any part is built; the data's width is not known
    # yet (one feature stands in for it), so train checks again once the data are loaded
    sizes.check_training_fits(cfg, 1, None, t.batch_size, "cpu")
    # each part built once for its own range checks, so that they fail before any data load; no
    # random draws spent
    with torch.random.fork_rng():
        below = cfg.model.latent_dim
        for i, (layer_cls, layer_params) in enumerate(layers):
            below = layer_cls(below, 0, layer_key(i), **layer_params).latent_dim
        prior_cls(below, 1, **prior_params)
        likelihood_cls(1, **likelihood_params)
        guide_cls(cfg.model.latent_dim, **guide_params)
