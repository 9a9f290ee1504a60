"""Encoder, decoder and classifier builders. An encoder maps ``(x, y_onehot=None)`` to the
``(loc, scale)`` of the Gaussian at the heart of q(z|x[, y]), followed, when the guide family asks
for ``extra_outputs`` more (guides.py), by those features; a decoder maps ``(z, y_onehot=None)`` to
one likelihood parameter per pixel; a classifier maps ``x`` to the logits of q(y|x) (the
semi-supervised model's, docs/conditional.md). Conditioning concatenates the one-hot label to the
input. All accept any number of leading batch dimensions (vectorized particles add one), and the
label and the input broadcast against each other: an enumerated label of shape (C, 1, C) meets
a batch of shape (B, D) as (C, B, D + C).
"""

import math

import torch
from torch import nn

from .errors import UserError

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU}
NETWORK_TYPES = ("mlp", "conv")
# "data": the decoder's output bias starts at the training data's mean pixel (Burda et al. 2015);
# "default": PyTorch's own layer initialization, as before
INIT_BIASES = ("data", "default")


def call_net(net, h, y_onehot):
    """``net(h)``, or ``net(h, y_onehot)`` for a conditional VAE: a plain module such as ``nn.Linear``
    works as an encoder or decoder, as the contract ``decoder(z[, y_onehot])`` says."""
    return net(h) if y_onehot is None else net(h, y_onehot)


def with_label(h, y_onehot):
    if y_onehot is None:
        return h
    h, y_onehot = broadcast_leading(h, y_onehot)
    return torch.cat([h, y_onehot], dim=-1)


def broadcast_leading(h, y_onehot):
    """``h`` and ``y_onehot`` expanded to their common leading (batch, particle, enumeration) dims."""
    lead = torch.broadcast_shapes(h.shape[:-1], y_onehot.shape[:-1])
    return h.expand(lead + h.shape[-1:]), y_onehot.expand(lead + y_onehot.shape[-1:])


def mlp(sizes, activation):
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """Splits the encoder's last layer into the mean, the scale (through exp of a log-scale) and
    the guide family's ``extra`` features, if it reads any."""

    def __init__(self, latent_dim, extra):
        super().__init__()
        self.latent_dim, self.extra = latent_dim, extra

    def forward(self, h):
        d = self.latent_dim
        loc, scale = h[..., :d], h[..., d : 2 * d].exp()
        return (loc, scale) if not self.extra else (loc, scale, h[..., 2 * d :])

    @torch.no_grad()
    def init_layer(self, layer):
        """The extra outputs start at zero (a full-rank scale starts diagonal, a flow's context
        blank), so every family starts as the diagonal Gaussian and departs from it as it learns."""
        layer.weight[2 * self.latent_dim :].zero_()
        layer.bias[2 * self.latent_dim :].zero_()


class MLPEncoder(nn.Module):
    def __init__(self, input_dim, latent_dim, num_classes=0, hidden=(200, 200), activation="tanh", extra_outputs=0):
        super().__init__()
        self.net = mlp([input_dim + num_classes, *hidden, 2 * latent_dim + extra_outputs], activation)
        self.head = GaussianHead(latent_dim, extra_outputs)
        self.head.init_layer(self.net[-1])

    def forward(self, x, y_onehot=None):
        return self.head(self.net(with_label(x, y_onehot)))


class MLPDecoder(nn.Module):
    def __init__(self, latent_dim, output_dim, num_classes=0, hidden=(200, 200), activation="tanh"):
        super().__init__()
        self.net = mlp([latent_dim + num_classes, *hidden, output_dim], activation)

    def forward(self, z, y_onehot=None):
        return self.net(with_label(z, y_onehot))

    @torch.no_grad()
    def init_output(self, pixel_mean, output_for_mean):
        """Start every pixel's output at ``output_for_mean(pixel_mean)``: before it learns anything
        from z, the decoder already draws the average digit instead of grey noise."""
        self.net[-1].bias.copy_(output_for_mean(pixel_mean))


def image_side(input_dim):
    side = math.isqrt(input_dim)
    if side * side != input_dim or side % 4:
        raise UserError(
            f"conv networks need square images with a side divisible by 4, but the data have {input_dim} pixels per datum; "
            "use model.encoder.type = \"mlp\" and model.decoder.type = \"mlp\", or pad the images"
        )
    return side


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (28 -> 14 -> 7), then a linear layer to (loc, log-scale).
    The label enters as extra constant input channels."""

    def __init__(self, input_dim, latent_dim, num_classes=0, channels=(32, 64), activation="relu", extra_outputs=0):
        super().__init__()
        self.side = image_side(input_dim)
        act = ACTIVATIONS[activation]
        c1, c2 = channels
        self.conv = nn.Sequential(
            nn.Conv2d(1 + num_classes, c1, 4, 2, 1), act(), nn.Conv2d(c1, c2, 4, 2, 1), act(), nn.Flatten()
        )
        self.fc = nn.Linear(c2 * (self.side // 4) ** 2, 2 * latent_dim + extra_outputs)
        self.head = GaussianHead(latent_dim, extra_outputs)
        self.head.init_layer(self.fc)

    def forward(self, x, y_onehot=None):
        if y_onehot is not None:
            x, y_onehot = broadcast_leading(x, y_onehot)
        lead = x.shape[:-1]
        h = x.reshape(-1, 1, self.side, self.side)
        if y_onehot is not None:
            y = y_onehot.reshape(-1, y_onehot.shape[-1], 1, 1)
            h = torch.cat([h, y.expand(-1, -1, self.side, self.side)], dim=1)
        return self.head(self.fc(self.conv(h)).reshape(lead + (-1,)))


class ConvDecoder(nn.Module):
    """A linear layer to a 7x7 feature map, then two stride-2 transposed convolutions to 28x28.
    ``channels`` are the encoder's, in the encoder's order: the decoder mirrors them."""

    def __init__(self, latent_dim, output_dim, num_classes=0, channels=(32, 64), activation="relu"):
        super().__init__()
        self.side = image_side(output_dim)
        act = ACTIVATIONS[activation]
        c2, c1 = channels
        self.c1 = c1
        self.fc = nn.Sequential(nn.Linear(latent_dim + num_classes, c1 * (self.side // 4) ** 2), act())
        self.deconv = nn.Sequential(nn.ConvTranspose2d(c1, c2, 4, 2, 1), act(), nn.ConvTranspose2d(c2, 1, 4, 2, 1))

    @torch.no_grad()
    def init_output(self, pixel_mean, output_for_mean):
        """The last transposed convolution has one bias for all pixels: it starts at the output for
        the data's overall mean pixel."""
        self.deconv[-1].bias.copy_(output_for_mean(pixel_mean.mean()).reshape(1))

    def forward(self, z, y_onehot=None):
        h = self.fc(with_label(z, y_onehot))
        lead = h.shape[:-1]
        q = self.side // 4
        out = self.deconv(h.reshape(-1, self.c1, q, q))
        return out.reshape(lead + (self.side * self.side,))


class MLPClassifier(nn.Module):
    """q(y|x) for the semi-supervised model: an MLP from the pixels to one logit per class."""

    def __init__(self, input_dim, num_classes, hidden=(200, 200), activation="tanh"):
        super().__init__()
        self.net = mlp([input_dim, *hidden, num_classes], activation)

    def forward(self, x):
        return self.net(x)


class ConvClassifier(nn.Module):
    """q(y|x) from the conv encoder's two stride-2 convolutions, then a linear layer to the logits."""

    def __init__(self, input_dim, num_classes, channels=(32, 64), activation="relu"):
        super().__init__()
        self.side = image_side(input_dim)
        act = ACTIVATIONS[activation]
        c1, c2 = channels
        self.conv = nn.Sequential(nn.Conv2d(1, c1, 4, 2, 1), act(), nn.Conv2d(c1, c2, 4, 2, 1), act(), nn.Flatten())
        self.fc = nn.Linear(c2 * (self.side // 4) ** 2, num_classes)

    def forward(self, x):
        lead = x.shape[:-1]
        return self.fc(self.conv(x.reshape(-1, 1, self.side, self.side))).reshape(lead + (-1,))


ENCODERS = {"mlp": MLPEncoder, "conv": ConvEncoder}
DECODERS = {"mlp": MLPDecoder, "conv": ConvDecoder}
CLASSIFIERS = {"mlp": MLPClassifier, "conv": ConvClassifier}


def build_network(spec, classes, *sizes, **extra):
    """``spec`` is a network config dict (``type``, ``hidden``/``channels``, ``activation``), or a
    ready ``nn.Module``, which is used as it is."""
    if isinstance(spec, nn.Module):
        return spec
    spec = dict(spec or {})
    kind = spec.pop("type", "mlp")
    return classes[kind](*sizes, **_network_kwargs(kind, spec), **extra)


def build_encoder(spec, input_dim, latent_dim, num_classes=0, extra_outputs=0):
    """An encoder whose last layer also gives the guide family's ``extra_outputs`` features."""
    return build_network(spec, ENCODERS, input_dim, latent_dim, num_classes, extra_outputs=extra_outputs)


def build_decoder(spec, latent_dim, output_dim, num_classes=0):
    return build_network(spec, DECODERS, latent_dim, output_dim, num_classes)


def build_classifier(spec, input_dim, num_classes):
    return build_network(spec, CLASSIFIERS, input_dim, num_classes)


def _network_kwargs(kind, spec):
    """Keep only the keys this network type uses: a config carries both ``hidden`` and ``channels``."""
    keys = {"mlp": ("hidden", "activation"), "conv": ("channels", "activation")}[kind]
    return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k in keys}
