"""What a config, or a command's size argument, asks of memory: checked against what the device has
before anything is allocated or written, so that a size no machine can hold is one line naming the
key to lower instead of an allocator traceback after minutes (or after the run folder was started).

The estimate is arithmetic on the config, not a model built to be measured: building one is the
very allocation being guarded against (and a flow with ``flows = 10**9`` would create a billion
Python modules first). It counts the built-in parts exactly for their parameters, and the largest
tensors a training step creates, as products of the sizes the config names. Each product is
charged to the key of its largest factor, which is the key the message tells the user to lower.
A part registered by a user is not counted (unless it subclasses a built-in one): it is
trusted to fit. The parameters a config leaves out are read from the classes' own defaults.

What is charged (float32, 4 bytes an element):

- every parameter four times: itself, its gradient and Adam's two moments;
- the largest activation of a step ``ACTIVATION_COPIES`` times (the forward value kept for the
  backward pass, its gradient, and the temporaries between them).
"""

import math
import os
from types import SimpleNamespace

import torch

from .errors import UserError
from .guides import GUIDES, FullRank, InverseAutoregressiveFlow
from .layers import LAYERS, layer_key
from .likelihoods import LIKELIHOODS
from .priors import PRIORS, GaussianMixture, VampPrior

BYTES = 4
PARAMETER_COPIES = 4
ACTIVATION_COPIES = 4


class Factor(int):
    """A size with the config key that sets it (``None`` for the data's own width)."""

    def __new__(cls, value, key):
        factor = super().__new__(cls, value)
        factor.key = key
        return factor


def term(*factors):
    """``(elements, key)`` of a product: the key is that of its largest factor the user can set."""
    settable = [f for f in factors if getattr(f, "key", None)]
    return math.prod(int(f) for f in factors), max(settable, key=int).key if settable else None


def _net_terms(net, key, n_in, n_out, pixels):
    """Parameter terms, and the widest layer as ``(width, key)``, of a built-in encoder or decoder
    between ``n_in`` and ``n_out`` features, for images of ``pixels`` pixels."""
    if net.type == "conv":
        first, second = (Factor(c, f"{key}.channels") for c in net.channels)
        kernel, half, quarter = Factor(16, None), Factor(max(1, pixels // 4), None), Factor(max(1, pixels // 16), None)
        # two 4x4 (transposed) convolutions and the dense layer to or from the quarter-size map
        dense = term(second, quarter, n_out) if key.endswith("encoder") else term(n_in, second, quarter)
        widest = max(term(first, half), term(second, quarter), key=lambda t: t[0])
        return [term(first, second, kernel), term(first, kernel), dense], widest
    widths = [n_in, *(Factor(h, f"{key}.hidden") for h in net.hidden), n_out]
    widest = max(((int(w), getattr(w, "key", None) or f"{key}.hidden") for w in widths[1:]), key=lambda t: t[0])
    return [term(a, b) for a, b in zip(widths[:-1], widths[1:])], widest


def _part(registry, spec, key):
    """``(class, parameters)`` of a config's prior, likelihood or family, with every parameter the
    config leaves out at the class's own default."""
    cls, params = registry.resolve(spec, key)
    return cls, {**registry.parameters(cls), **params}


def _family_terms(spec, latent, key):
    """``(extra encoder outputs, parameter terms, widest tensors)`` of a posterior family ``spec``
    (config key ``key``) over a layer of ``latent`` dimensions."""
    guide, guide_params = _part(GUIDES, spec, key)
    extra, params, widest = Factor(0, None), [], []
    if issubclass(guide, FullRank):
        extra = Factor(latent * (latent - 1) // 2, latent.key)
        widest.append(term(latent, latent))  # the Cholesky factor of each row
    elif issubclass(guide, InverseAutoregressiveFlow):
        flows = Factor(guide_params["flows"], f"{key}.flows")
        context = Factor(guide_params["context"], f"{key}.context")
        hidden = [Factor(h, f"{key}.hidden") for h in guide_params["hidden"]]
        extra = context
        widths = [Factor(latent + context, latent.key if latent > context else context.key), *hidden, Factor(2 * latent, latent.key)]
        params += [term(flows, a, b) for a, b in zip(widths[:-1], widths[1:])]
        widest += [(int(h), h.key) for h in hidden]
    return extra, params, widest


def training_terms(cfg, input_dim, num_classes, rows):
    """``(parameter terms, activation terms)`` of a training step on ``rows`` data rows, each a
    list of ``(elements, key)``."""
    m, t = cfg.model, cfg.train
    data = Factor(input_dim, None)
    latent = Factor(m.latent_dim, "model.latent_dim")
    classes = Factor(num_classes or 0, None) if m.conditional else Factor(0, None)
    batch = Factor(min(t.batch_size, rows), "train.batch_size")
    # a semi-supervised step runs the networks once per class (the unknown label is enumerated)
    particles = Factor(t.num_particles * (num_classes if cfg.data.labelled and num_classes else 1), "train.num_particles")
    prior, prior_params = _part(PRIORS, m.prior, "model.prior")
    _, likelihood_params = _part(LIKELIHOODS, m.likelihood, "model.likelihood")

    extra, params, widest = _family_terms(m.guide, latent, "model.guide")
    encoder_out = Factor(2 * m.latent_dim + extra, "model.latent_dim" if m.latent_dim >= extra else extra.key)
    terms, wide = _net_terms(m.encoder, "model.encoder", Factor(input_dim + classes, None), encoder_out, input_dim)
    params += terms
    widest += [wide, (int(encoder_out), encoder_out.key)]
    terms, wide = _net_terms(m.decoder, "model.decoder", Factor(m.latent_dim + classes, "model.latent_dim"), data, input_dim)
    params += terms
    widest.append(wide)
    below = latent
    for index, spec in enumerate(m.layers):  # each layer above z: its two MLPs and its family
        key = f"model.layers[{index}]"
        _, layer_params = _part(LAYERS, spec, layer_key(index))
        top = Factor(layer_params["latent_dim"], f"{key}.latent_dim")
        layer_extra, layer_terms, layer_widest = _family_terms(layer_params["guide"], top, f"{key}.guide")
        mlp = SimpleNamespace(type="mlp", hidden=layer_params["hidden"])
        up, wide_up = _net_terms(mlp, key, Factor(below + classes, below.key), Factor(2 * top + layer_extra, top.key), input_dim)
        down, wide_down = _net_terms(mlp, key, Factor(top + classes, top.key), Factor(2 * below, below.key), input_dim)
        params += layer_terms + up + down
        widest += layer_widest + [wide_up, wide_down]
        below = top
    latent = below  # the prior is on the top layer

    activations = []
    if issubclass(prior, (GaussianMixture, VampPrior)):
        components = Factor(prior_params["components"], "model.prior.components")
        # each datum's log-density under every component
        activations.append(term(batch, particles, components, latent))
        if issubclass(prior, GaussianMixture):
            params.append(term(components, Factor(2 * latent + 1, latent.key)))
        else:  # the pseudo-inputs, pushed through the encoder (and the layers above z) at every step
            params.append(term(components, data))
            activations += [term(components, Factor(w, k)) for w, k in widest]
    if likelihood_params.get("scale") == "learned":  # a location-scale likelihood's per-pixel log-scale
        params.append(term(data))
    activations += [term(batch, particles, Factor(w, k)) for w, k in widest]
    return params, activations


def available_bytes(device):
    """Memory free for tensors on ``device``: the GPU's free memory, or the machine's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return math.inf


def gigabytes(n):
    return f"{n / 1e9:.3g} GB"


def check_training_fits(cfg, input_dim, num_classes, rows, device):
    """Refuse, naming the key to lower, a config whose training step cannot fit on ``device``."""
    params, activations = training_terms(cfg, input_dim, num_classes, rows)
    parameters = sum(n for n, _ in params)
    largest = max(activations, key=lambda t: t[0])
    need = BYTES * (PARAMETER_COPIES * parameters + ACTIVATION_COPIES * largest[0])
    have = available_bytes(device)
    if need <= have:
        return
    biggest = max(params, key=lambda t: t[0])
    key = biggest[1] if PARAMETER_COPIES * parameters >= ACTIVATION_COPIES * largest[0] else largest[1]
    raise UserError(
        f"this config needs about {gigabytes(need)} of memory ({parameters:,} parameters, with their gradients and Adam's moments, "
        f"and a largest tensor of {largest[0]:,} elements per step), more than the {gigabytes(have)} free on {torch.device(device)}; "
        f"lower {key or 'the model sizes'}"
    )


def check_tensor_fits(elements, what, option, device):
    """Refuse a command whose ``option`` asks for a tensor of ``elements`` floats that cannot fit."""
    need, have = BYTES * ACTIVATION_COPIES * elements, available_bytes(device)
    if need > have:
        raise UserError(f"{option} asks for {what} ({elements:,} numbers, about {gigabytes(need)}), more than the "
                        f"{gigabytes(have)} free on {torch.device(device)}; lower {option}")
