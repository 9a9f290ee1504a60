"""Likelihoods p(x|z): turn the decoder's output (one value per pixel) into a distribution over x.

Register a new one with ``@LIKELIHOODS.register("name")``; its keyword-only ``__init__`` arguments
become config parameters. ``support`` says what data it accepts so bad input is caught before
training rather than as NaNs halfway through.
"""

import pyro.distributions as dist
import torch
from torch import nn

from .errors import UserError
from .registry import Registry

LIKELIHOODS = Registry("likelihood")


class Likelihood(nn.Module):
    support = "real"  # "binary" | "unit" | "real"

    def mean(self, out):
        """E[x|z] for decoder output ``out``: what sample images show."""
        return self(out).mean

    def output_for_mean(self, mean):
        """The decoder output whose E[x|z] is ``mean``, used to start the decoder at the data's mean
        pixel; ``None`` (a likelihood of your own that does not say) leaves the decoder as built."""
        return None

    def check(self, x):
        """Raise ``UserError`` if ``x`` lies outside this likelihood's support."""
        if self.support == "binary" and not ((x == 0) | (x == 1)).all():
            raise UserError(
                f"likelihood '{self.name}' needs binary pixels but the data have grey levels; "
                "set data.binarize = \"dynamic\" or \"static\", or use likelihood \"continuous_bernoulli\" or \"gaussian\""
            )
        if self.support == "unit" and ((x < 0) | (x > 1)).any():
            raise UserError(
                f"likelihood '{self.name}' needs pixels in [0, 1]; rescale the data or use likelihood \"gaussian\" or \"laplace\""
            )


@LIKELIHOODS.register("bernoulli")
class Bernoulli(Likelihood):
    """x_i ~ Bernoulli(sigmoid(out_i)): the decoder outputs logits; log p(x|z) is minus the BCE."""

    support = "binary"

    def __init__(self, input_dim):
        super().__init__()

    def forward(self, out):
        return BernoulliPixels(dist.Bernoulli(logits=out, validate_args=False), 1)

    def mean(self, out):
        return torch.sigmoid(out)

    def output_for_mean(self, mean):
        return clamped_logit(mean)


def clamped_logit(mean):
    """Pixels that are never (or always) on in the training data would ask for an infinite logit;
    clamping keeps the start finite, so the decoder can still move those pixels (as Burda et al.)."""
    p = mean.clamp(1e-3, 1 - 1e-3)
    return p.log() - (-p).log1p()


class BernoulliPixels(dist.Independent):
    """Independent Bernoulli pixels whose ``log_prob`` negates the BCE once per datum rather than
    once per pixel: the same number, one full-image pass less forward and backward in training's
    hottest line."""

    def log_prob(self, value):
        logits, value = torch.broadcast_tensors(self.base_dist.logits, value)  # particles broadcast over x
        bce = nn.functional.binary_cross_entropy_with_logits(logits, value, reduction="none")
        return -bce.sum(-1)


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): the properly normalized density
    on [0, 1] for grey-level pixels; the decoder outputs logits."""

    support = "unit"

    def __init__(self, input_dim):
        super().__init__()

    def forward(self, out):
        return dist.ContinuousBernoulli(logits=out, validate_args=False).to_event(1)

    def output_for_mean(self, mean):
        # the logit of the mean pixel, as for the Bernoulli: close to, not exactly, the continuous
        # Bernoulli's mean, which is all a starting point needs
        return clamped_logit(mean)


class _LocScale(Likelihood):
    """Location-scale families: the decoder outputs the location (the mean for symmetric ones);
    the scale is a fixed number or, with ``scale = "learned"``, one learned log-scale per pixel."""

    family = None

    def __init__(self, input_dim, *, scale="learned"):
        super().__init__()
        if scale == "learned":
            self.log_scale = nn.Parameter(torch.zeros(input_dim))
        elif isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0:
            self.register_buffer("log_scale", torch.full((input_dim,), float(scale)).log())
        else:
            raise UserError(f"likelihood '{self.name}': scale must be a positive number or \"learned\", got {scale!r}")

    def forward(self, out):
        return self.family(out, self.log_scale.exp(), validate_args=False).to_event(1)

    def mean(self, out):
        return out

    def output_for_mean(self, mean):
        return mean


@LIKELIHOODS.register("gaussian")
class Gaussian(_LocScale):
    """x ~ N(out, s^2 I): with a fixed s, log p(x|z) is minus the squared error over 2 s^2, plus a constant."""

    family = dist.Normal


@LIKELIHOODS.register("laplace")
class Laplace(_LocScale):
    """x ~ Laplace(out, s): absolute-error reconstruction, heavier tails than the Gaussian."""

    family = dist.Laplace
