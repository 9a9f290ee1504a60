r"""Importance-weighted estimate of the marginal likelihood log p(x), per datum, with diagnostics.

With the encoder's q(z|x) as the proposal and :math:`z_1, \dots, z_K \sim q(z|x)` independently,
the log importance weights are

.. math:: \log w_k = \log p(x, z_k) - \log q(z_k | x)

and, per datum (never summed over a minibatch),

.. math::
    \widehat{\log p}(x) = \operatorname{logsumexp}_k \log w_k - \log K
    \qquad \text{(Burda et al. 2015; } \mathbb{E}[\widehat{\log p}(x)] \le \log p(x)
    \text{, rising to it as } K \to \infty\text{)}

    \mathrm{ELBO}(x) = \frac{1}{K} \sum_k \log w_k \qquad
    \mathrm{ESS}(x) = \frac{(\sum_k w_k)^2}{\sum_k w_k^2}
    = \exp\big(2 \operatorname{logsumexp}_k \log w_k - \operatorname{logsumexp}_k 2 \log w_k\big)

The gap :math:`\log p(x) - \mathrm{ELBO}(x)` estimates :math:`\mathrm{KL}(q(z|x) \,\|\, p(z|x))`.
The Pareto :math:`\hat k` of the weights (PSIS, Vehtari et al. 2024, through ArviZ) says whether
the estimate can be trusted: above 0.7 the weights' tail is too heavy for K samples to pin it down.

The weights come from the VAE's Pyro programs themselves: the guide is traced under a particle
plate (vectorized over samples), the model is replayed against it, and every sample site's
``log_prob`` is summed, keeping the data plate's dimension. A new prior or likelihood therefore
needs no change here.

Memory: samples are drawn ``chunk_size`` at a time, so the largest tensors are
``chunk_size x batch x input_dim`` (the decoder's output); only the log weights themselves,
``K x batch`` numbers, are kept for every sample, because PSIS needs the whole tail. Reducing that
buffer once at the end is the same logsumexp a running one would compute, without a second copy
of the bookkeeping. Exactly K samples are drawn per datum; the last chunk is smaller when the chunk
size does not divide K.
"""

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine
from tqdm.auto import tqdm

from . import objectives
from .data import Split
from .errors import UserError

# Floats in the largest per-chunk tensor (chunk x batch x input_dim): 64 MiB in float32.
CHUNK_ELEMENTS = 2**24
KHAT_TRUST = 0.7
# PSIS fits the largest K/5 weights (for K <= 225) and a Pareto fit needs at least 5 of them
# (ArviZ 1.x refuses fewer, 0.x returns inf), so below 25 samples there is no tail to fit.
PSIS_MIN_SAMPLES = 25


@dataclass
class LogPxResult:
    """Per-datum estimates (tensors of shape (N,), on the CPU, float64) for ``num_samples`` samples.

    ``log_px`` and ``elbo`` are in nats per datum; ``ess`` lies in [1, K]; ``khat`` is the PSIS
    Pareto shape (``inf`` when the tail has too few samples to fit, e.g. K = 1).
    """

    log_px: torch.Tensor
    elbo: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    num_samples: int

    @property
    def gap(self):
        """log p(x) - ELBO per datum: an estimate of KL(q(z|x) || p(z|x)), in nats."""
        return self.log_px - self.elbo

    def summary(self):
        """Dataset means in nats per datum, with standard errors of the means over the data."""
        n = len(self.log_px)
        return {
            "n": n,
            "num_samples": self.num_samples,
            "log_px": self.log_px.mean().item(),
            "log_px_stderr": stderr(self.log_px),
            "elbo": self.elbo.mean().item(),
            "elbo_stderr": stderr(self.elbo),
            "gap": self.gap.mean().item(),
            "gap_stderr": stderr(self.gap),
            "ess_mean": self.ess.mean().item(),
            "khat_max": self.khat.max().item(),
            "khat_frac_above_0_7": (self.khat > KHAT_TRUST).double().mean().item(),
        }


def stderr(values):
    """Standard error of the mean over data (NaN for a single datum)."""
    n = len(values)
    return (values.std() / math.sqrt(n)).item() if n > 1 else float("nan")


def log_weights(vae, x, y, num_samples):
    """``log p(x, z_k) - log q(z_k | x)`` of shape (num_samples, B), from one vectorized pass.

    The particle plate sits left of the data plate (the model's only plate, dim -1), so every
    site's ``log_prob`` has shape (num_samples, B): summed over sites, never over data.
    """
    with pyro.plate("particles", num_samples, dim=-2):
        guide_trace = poutine.trace(vae.guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, y)
    return objectives.log_weights(model_trace, guide_trace)


def batch_log_weights(vae, x, y, num_samples, chunk_size):
    """All ``num_samples`` log weights of a batch, (num_samples, B) float64, drawn in chunks.

    When the device runs out of memory the chunk is halved and retried, so exactly K samples are
    still drawn; returns the weights and the chunk size that fitted, for the batches after.
    """
    out = torch.empty(num_samples, x.shape[0], dtype=torch.float64, device=x.device)
    start = 0
    while start < num_samples:
        stop = min(start + chunk_size, num_samples)
        try:
            out[start:stop] = log_weights(vae, x, y, stop - start)
        except torch.cuda.OutOfMemoryError:
            if chunk_size == 1:
                raise UserError("out of device memory even one sample at a time; use a smaller --batch-size or --device cpu") from None
            torch.cuda.empty_cache()
            chunk_size //= 2
            continue
        start = stop
    return out, chunk_size


@functools.cache
def psis_khat():
    """ArviZ's PSIS k-hat of one datum's log weights (K,), through the API of the installed line.

    ArviZ 1.x (what pip picks on Python 3.12+, where pyro_vae depends on ``arviz-stats``) moved
    PSIS into ``arviz_stats``; ArviZ 0.x (the newest line on Python 3.10 and 3.11) has
    ``arviz.psislw``. Both take the samples on the last axis, but ``arviz_stats`` takes
    log-likelihood-like values and fits the tail of their negation (its ``loo`` passes the
    log-likelihood), so log weights go in negated.
    """
    # imported here: it takes seconds, which `import pyro_vae` (and `pyro-vae train`) should not pay
    try:
        from arviz_stats.base import array_stats
    except ImportError:
        with warnings.catch_warnings():
            # ArviZ 0.x announces its 1.0 refactor with a FutureWarning on import; not about us
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
        return lambda lw: arviz.psislw(lw, reff=1.0)[1]
    return lambda lw: array_stats.psislw(-lw, r_eff=1.0)[1]


def pareto_khat(lw):
    """PSIS k-hat per datum of log weights (K, B); independent draws, so relative efficiency 1.

    ``inf`` where no tail can be fitted: fewer than ``PSIS_MIN_SAMPLES`` weights, or a tail that
    ArviZ cannot fit (all its weights equal, or a first quartile at its minimum).
    """
    if lw.shape[0] < PSIS_MIN_SAMPLES:
        return torch.full((lw.shape[1],), math.inf, dtype=torch.float64)
    khat_of = psis_khat()
    khat = []
    # a datum at a time, so a tail ArviZ refuses costs only its own k-hat; both lines loop over
    # data in Python anyway, so this is no slower than one call on the whole batch
    for column in lw.T.cpu().numpy():
        # the Pareto fit's profile likelihood overflows exp() for unlikely shapes, giving them
        # weight 0 as intended; numpy's warning about it is noise
        with np.errstate(over="ignore"):
            try:
                k = float(khat_of(column))
            except ValueError:  # ArviZ 1.x refuses a tail of equal weights; 0.x returns inf
                k = math.inf
        # ArviZ returns NaN when the tail is not Pareto-like at all: as untrustworthy as inf
        khat.append(math.inf if math.isnan(k) else k)
    return torch.tensor(khat, dtype=torch.float64)


def reduce_weights(lw):
    """(log p(x), ELBO, ESS) per datum from log weights (K, B)."""
    lse = torch.logsumexp(lw, dim=0)
    log_px = lse - math.log(lw.shape[0])
    ess = torch.exp(2 * lse - torch.logsumexp(2 * lw, dim=0))
    return log_px, lw.mean(dim=0), ess


def estimate_log_px(vae, x, y=None, num_samples=5000, chunk_size=None, batch_size=100, seed=None, progress=False):
    """Importance-weighted log p(x) (log p(x | y) for a conditional VAE) of every row of ``x``.

    Args:
        vae: a :class:`pyro_vae.VAE` (any prior, likelihood, encoder and decoder).
        x: (N, input_dim) data on the VAE's device, as the likelihood expects them (binary pixels
            for a Bernoulli likelihood); taken in the VAE's floating-point precision.
        y: (N,) integer labels, required for a conditional VAE and ignored otherwise.
        num_samples: K, importance samples per datum.
        chunk_size: samples drawn at once; by default as many as keep a chunk x batch x input_dim
            tensor within ``CHUNK_ELEMENTS`` floats.
        batch_size: data rows evaluated together.
        seed: if given, draws come from ``torch.manual_seed(seed)`` without disturbing the global
            RNG stream; otherwise from the global RNG.
        progress: show a progress bar over batches (on stderr, where it is a terminal).

    Returns:
        :class:`LogPxResult` with per-datum log p(x), ELBO, ESS and k-hat.
    """
    x = torch.as_tensor(x, dtype=vae.dtype)
    if x.dim() != 2 or x.shape[1] != vae.input_dim or x.shape[0] == 0:
        raise UserError(f"x must have shape (N, {vae.input_dim}) with N >= 1, one flattened datum per row, got {tuple(x.shape)}")
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size), ("chunk_size", chunk_size)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    n = x.shape[0]
    y = None if vae.num_classes is None or y is None else torch.as_tensor(y, device=x.device)
    vae.check_labels(y, n)
    batch_size = min(batch_size, n)
    data = Split(x, y)
    chunk_size = min(num_samples, chunk_size or max(1, CHUNK_ELEMENTS // (batch_size * vae.input_dim)))

    parts = []
    was_training = vae.training
    vae.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        # no gradients are taken, so the parameters need not pass through Pyro's param store
        registration = vae.parameters_registered(False)
        with torch.no_grad(), pyro.validation_enabled(False), registration, torch.random.fork_rng(devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for start in tqdm(range(0, n, batch_size), desc="log p(x)", unit="batch", disable=None if progress else True, leave=False):
                batch = data[start : start + batch_size]
                lw, chunk_size = batch_log_weights(vae, batch.x, batch.y, num_samples, chunk_size)
                parts.append((*(t.cpu() for t in reduce_weights(lw)), pareto_khat(lw)))
    finally:
        vae.train(was_training)
    log_px, elbo, ess, khat = (torch.cat(column) for column in zip(*parts))
    return LogPxResult(log_px, elbo, ess, khat, num_samples)


def estimate_log_px_summed(vae, x, num_samples=5000, **kwargs):
    r"""log p(x) of a semi-supervised VAE with the label summed out exactly:

    .. math:: \log p(x) = \operatorname{logsumexp}_{c=1}^C \widehat{\log p}(x, y = c),

    each :math:`\widehat{\log p}(x, y = c)` importance-sampled with K = ``num_samples`` draws from
    q(z|x, c) (:func:`estimate_log_px` with every label observed as c: the model's log p(y = c)
    is one of its sites). The sum over classes is exact; only the C integrals over z are sampled,
    so the estimate is a stochastic lower bound as before (C x K samples per datum in all).

    The ELBO is the unlabelled bound U(x) = sum_c q(c|x) ELBO(x, c) + H(q(y|x)); ESS and k-hat
    are those of the class that dominates the sum (the largest log p(x, y = c)), whose weights
    decide the estimate. ``kwargs`` are :func:`estimate_log_px`'s.
    """
    x = torch.as_tensor(x, dtype=vae.dtype)
    if not vae.semi_supervised:
        raise UserError("log p(x) with the label summed out needs a semi-supervised VAE (a classifier q(y|x)); "
                        "a conditional VAE's estimate is log p(x | y): call estimate_log_px with the labels")
    per_class = [estimate_log_px(vae, x, torch.full((len(x),), c, device=x.device), num_samples=num_samples, **kwargs)
                 for c in range(vae.num_classes)]
    log_pxy = torch.stack([r.log_px for r in per_class])  # (C, N)
    q_y = torch.cat([vae.classify(x[i : i + 1000]) for i in range(0, len(x), 1000)]).T.cpu().double()
    elbo = (q_y * torch.stack([r.elbo for r in per_class])).sum(0) - torch.special.xlogy(q_y, q_y).sum(0)
    dominant = log_pxy.argmax(0)
    pick = lambda name: torch.stack([getattr(r, name) for r in per_class]).gather(0, dominant[None])[0]  # noqa: E731
    return LogPxResult(torch.logsumexp(log_pxy, 0), elbo, pick("ess"), pick("khat"), num_samples)
