"""The training step, eager or traced and compiled.

A :class:`Step` takes one batch of grey or binary images, binarizes it when binarization is
dynamic, evaluates the configured objective on the VAE's Pyro model and guide, and leaves the
gradient of the loss in each parameter's ``.grad`` for the caller's optimizer. It returns the
loss as a 0-dim tensor on the device and never reads it back to the host.

Eager, the step is Pyro's own ``objective.differentiable_loss`` under :class:`noise.StepNoise`
and :class:`objectives.LatentScale`. Every call re-runs Pyro's effect handlers in Python, and
Pyro's ``Trace_ELBO`` family reads every site's log-density back with ``.item()``.

Compiled, the model and guide are traced once (one graph per run, see below) into a graph of tensor
operations: the gradient and value (``torch.func.grad_and_value``) of
the objective's ``differentiable_loss`` (its one tensor-only reduction of the traces,
:meth:`objectives.Objective.reduce`, the same call as eager) with the parameters swapped in by
``torch.func.functional_call``, the binarization uniforms, the guide's standard-normal noise and
the KL weight as inputs (:class:`noise.GivenNoise`), captured by ``make_fx`` on fake tensors and compiled by inductor (on
CUDA replayed as a CUDA graph, ``mode="reduce-overhead"``). The random numbers are drawn outside
the graph from the step's :class:`noise.StepNoise` in the eager order (uniforms first, then each latent site's
noise), so both paths see the same numbers and give the same loss and gradients up to float
rounding. Tracing on fake tensors makes data-dependent Python control flow (``if x.sum() > 0``
in a user's encoder) an error rather than one branch silently baked in; ``compile = "auto"``
then runs eager and says why, once.

One graph per run: a batch shorter than the run's batch (an epoch's last) is padded to it with
rows that ``poutine.mask`` leaves out of every site's log-density, so the loss and gradients are
the short batch's, as are its random numbers (drawn for the short batch, then padded with zeros).

``compile = "auto"`` compiles only where it pays (:func:`compile_pays`): it times the run's first
eager steps, models the compiled step as :data:`COMPILED_STEP_RATIO` of that, and weighs the
saving over the steps left against what the compile will cost (:mod:`pyro_vae.compile_cache`:
cold, or warm when the cache already holds the graph), in one log line.
"""

import contextlib
import logging
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
import torch.distributed
from pyro import poutine
from torch.fx.experimental.proxy_tensor import make_fx
from tqdm.auto import tqdm

from . import compile_cache, distributed, noise
from .config import COMPILE_MODES
from .errors import UserError
from .objectives import LatentScale

# frames in these folders are the machinery; the first frame outside them is the user's code
_LIBRARY_DIRS = tuple(str(Path(m.__file__).parent) for m in (torch, pyro, contextlib)) + (str(Path(__file__).parent),)

# a compiled step's time as a fraction of the eager step's at batch 100: on the shared 2-core CPU
# the steps measured 0.62 to 0.81 and docs/benchmarks.md's epochs 0.70 (inductor's fused kernels
# against Pyro's Python and torch's per-op dispatch); on an H200 the epochs 0.26 (one CUDA graph
# launch against a launch per kernel)
COMPILED_STEP_RATIO = {"cpu": 0.65, "cuda": 0.3}
TIMED_STEPS = 5  # eager steps timed before ``auto`` decides; the fastest of them is the estimate
# inductor's dry compile of a test program per instruction set (about 8 s on a cold cache, of a
# cold compile's 20) only confirms what the CPU's flags already say; a compiler that cannot build
# for them fails the compile, which ``auto`` answers by training eager
CPU_OPTIONS = {"cpp.vec_isa_ok": True}


def compile_pays(steps_left, compile_seconds, saving_per_step):
    """Whether compiling is worth it: the seconds the compiled step saves over the run's steps
    left exceed the seconds compiling takes."""
    return steps_left * saving_per_step > compile_seconds


def _log_line(message):
    tqdm.write(f"pyro-vae: {message}", file=sys.stderr)


class LossModule(torch.nn.Module):
    """The objective over the VAE's model and guide as a module, so that
    ``DistributedDataParallel`` can wrap it (in a world of one it is called directly)."""

    def __init__(self, vae, objective):
        super().__init__()
        self.vae, self.objective = vae, objective

    def forward(self, x, y, step_noise, kl_weight=1.0):
        with step_noise, LatentScale(kl_weight) if kl_weight < 1 else contextlib.nullcontext():
            return self.objective.differentiable_loss(self.vae.model, self.vae.guide, x, y)


class TracedLoss(LossModule):
    """The same loss with its randomness and KL weight as inputs, for tracing into a graph; the
    rows where ``rows`` is false (a short batch's padding) count for nothing."""

    def forward(self, x, uniforms, y, rows, kl_weight, eps):
        if uniforms is not None:
            x = (uniforms < x).to(x.dtype)
        with noise.GivenNoise(eps), LatentScale(kl_weight), poutine.mask(mask=rows):
            return self.objective.differentiable_loss(self.vae.model, self.vae.guide, x, y)


@dataclass
class _Graph:
    """A compiled step for one input shape: ``fn(params, buffers, x, uniforms, y, rows, kl_weight, eps)``
    returns (gradients by parameter name, loss); ``draws`` are the noise shapes it takes, in order,
    for this process's rows."""

    fn: object  # the traced graph, under torch.compile from its first call
    draws: list
    cuda_graph: bool  # replayed as a CUDA graph, whose outputs the next replay overwrites
    seconds: float  # spent tracing and compiling; inductor compiles on the first call
    nodes: int  # in the traced graph: what the compile's cost is estimated from
    key: str  # compile_cache.fingerprint of the graph
    settings: dict  # torch.compile's mode or options, applied at the first call
    checked: bool = False  # whether a first call went through (it may still fail to compile)


class NotTraceable(Exception):
    """Why this model cannot run compiled: one line for the log or the ``UserError``."""


class Step:
    """The training step for one (VAE, objective, compile mode, device); see the module docstring.

    ``compile``: ``"off"`` always eager; ``"on"`` compiled or a ``UserError``; ``"auto"``
    compiled where the model traces into a static graph, the compiler works and, when ``steps``
    (the steps this run will take) is given, compiling pays for itself over them
    (:func:`compile_pays`), else eager with one log line saying why. ``batch_size``: the global
    rows of the run's full batch, to which a compiled step pads a shorter one (``None``: no
    padding, one graph per shape). ``backend`` is ``torch.compile``'s (``None`` runs the traced
    graph as it is, without a compiler). ``compilations`` counts traced graphs and
    ``compile_seconds`` the time spent tracing and compiling them.

    Build it once the VAE is on its device. Under torchrun the gradients and the returned loss
    cover the global batch: DistributedDataParallel all-reduces them eager, the step itself
    compiled.
    """

    def __init__(self, vae, objective, *, dynamic_binarization, compile="auto", backend="inductor", world=distributed.World(),
                 log=_log_line, steps=None, batch_size=None):
        if compile not in COMPILE_MODES:
            raise UserError(f"train.compile = {compile!r} is not valid; choose one of: {', '.join(COMPILE_MODES)}")
        self.vae, self.objective, self.dynamic = vae, objective, dynamic_binarization
        self.compile, self.backend, self.world = compile, backend, world
        self.log = log if world.is_main else (lambda message: None)
        self.eager_loss = distributed.wrap(LossModule(vae, objective), world)
        self.traced_loss = TracedLoss(vae, objective)
        self.by_name = dict(self.traced_loss.named_parameters())
        self.graphs, self.masks = {}, {}
        self.padded_rows = None if batch_size is None else _length(world.shard(batch_size))
        # an objective that has no static graph (the semi-supervised one's enumeration) says why
        untraceable = getattr(objective, "eager_reason", None)
        if untraceable and compile == "on":
            raise UserError(f"train.compile = on but the training step cannot be compiled: {untraceable}; use train.compile = auto or off")
        if untraceable and compile == "auto":
            self.log(f"training eager, not compiled (train.compile = auto): {untraceable}")
        self.eager_reason = "train.compile = off" if compile == "off" else untraceable
        # under auto with a known length the first steps run eager and timed, then it decides
        self.steps, self.timings = steps, [] if compile == "auto" and steps is not None else None
        if self.compiled and backend is not None:
            self.cache = compile_cache.use()
        self.compilations, self.compile_seconds = 0, 0.0

    @property
    def compiled(self):
        """Whether steps run compiled (until a model turns out not to trace, or compiling not to
        pay, under ``auto``)."""
        return self.eager_reason is None

    def __call__(self, x, y, step_noise, kl_weight=1.0):
        """One step on this process's rows ``x`` (grey when binarization is dynamic), labels ``y``
        (or ``None``) of the global batch that ``step_noise`` (a :class:`noise.StepNoise`) draws
        the random numbers of: sets each parameter's ``.grad`` to the gradient of the global
        batch's loss and returns that loss (0-dim, on the device)."""
        with pyro.validation_enabled(False), self.vae.parameters_registered(False):
            uniforms = step_noise.uniforms(x) if self.dynamic else None
            if self.compiled and self.timings is None:
                result = self._compiled_step(x, uniforms, y, step_noise, kl_weight)
                if result is not None:
                    return result
            binary = x if uniforms is None else (uniforms < x).to(x.dtype)
            if not self.compiled:
                return self._eager_step(binary, y, step_noise, kl_weight)
            loss = self._timed_eager_step(binary, y, step_noise, kl_weight)
            if len(self.timings) == min(TIMED_STEPS, self.steps):
                self._decide(x, uniforms, y)
            return loss

    def _eager_step(self, x, y, step_noise, kl_weight):
        for p in self.vae.parameters():
            p.grad = None
        loss = self.eager_loss(x, y, step_noise, kl_weight)
        # DDP averages the processes' gradients; each loss is a sum over a shard, so scale to the sum
        (loss * self.world.size).backward()
        return self._global(loss.detach())

    def _timed_eager_step(self, x, y, step_noise, kl_weight):
        # a few steps of a run, once: on a GPU the timing waits for the device
        _synchronize(x.device)
        started = time.perf_counter()
        loss = self._eager_step(x, y, step_noise, kl_weight)
        _synchronize(x.device)
        self.timings.append(time.perf_counter() - started)
        return loss

    def _decide(self, x, uniforms, y):
        """``auto``, after the timed eager steps: compile from the next step on, or stay eager,
        by :func:`compile_pays`, in one log line (every process decides alike from the same numbers)."""
        timings, self.timings = self.timings, None
        steps_left = self.steps - len(timings)
        try:
            graph = self._trace(*self._padded(x, uniforms, y))
        except NotTraceable as e:
            self.eager_reason = str(e)
            self.log(f"training eager, not compiled (train.compile = auto): {e}")
            return
        seconds, warm = compile_cache.estimate(graph.key, graph.nodes, x.device.type)
        fastest, seconds, warm = (v / self.world.size for v in self.world.sum(min(timings), seconds, float(warm)))
        saving = fastest * (1 - COMPILED_STEP_RATIO.get(x.device.type, COMPILED_STEP_RATIO["cpu"]))
        pays = compile_pays(steps_left, seconds, saving)
        cache = "warm" if warm == 1 else "cold"
        self.log(f"train.compile = auto: {'compiling the training step' if pays else 'training eager'}: the {steps_left} steps left "
                 f"would save about {steps_left * saving:.1f} s compiled ({saving * 1e3:.2f} ms of each {fastest * 1e3:.2f} ms eager step), "
                 f"{'more' if pays else 'less'} than compiling costs (about {seconds:.1f} s, compile cache {cache})")
        if not pays:
            self.graphs.clear()
            self.compilations = 0
            self.eager_reason = "compiling would not pay for itself"

    def _padded(self, x, uniforms, y):
        """The graph's key and inputs for this process's rows: a short batch padded to the run's
        batch, and the mask of its real rows."""
        rows = len(x)
        padded = max(rows, self.padded_rows or 0)
        if padded > rows:
            x, uniforms, y = (None if t is None else _pad(t, 0, padded) for t in (x, uniforms, y))
        mask = self.masks.get((rows, padded))
        if mask is None:  # once per shape: the hot loop builds nothing
            mask = self.masks[rows, padded] = torch.arange(padded, device=x.device) < rows
        key = (tuple(x.shape), x.dtype, None if y is None else tuple(y.shape))
        return key, x, uniforms, y, mask

    def _compiled_step(self, x, uniforms, y, step_noise, kl_weight):
        """The compiled step, or ``None`` when ``auto`` has just fallen back to eager."""
        key, x, uniforms, y, mask = self._padded(x, uniforms, y)
        try:
            graph = self.graphs.get(key) or self._trace(key, x, uniforms, y, mask)
            # the short batch's numbers: drawn for its global rows, padded with zeros
            eps = [_pad(step_noise.normal(shape[:d] + (step_noise.global_size,) + shape[d + 1 :], d, x), d, shape[d])
                   for shape, d in graph.draws]
            params, buffers = self._tensors()
            # a fill, not a copy from the host: no synchronization with the device
            inputs = (params, buffers, x, uniforms, y, mask, torch.full((), kl_weight, dtype=x.dtype, device=x.device), eps)
            if graph.cuda_graph:  # a new training iteration: the last replay's outputs are dead (copied below)
                torch.compiler.cudagraph_mark_step_begin()
            grads, loss = graph.fn(*inputs) if graph.checked else self._first_call(graph, inputs)
        except NotTraceable as e:
            if self.compile == "on":
                raise UserError(f"train.compile = on but the training step cannot be compiled: {e}; use train.compile = auto or off") from None
            self.eager_reason = str(e)
            self.log(f"training eager, not compiled (train.compile = auto): {e}")
            return None
        targets = []
        for name, grad in grads.items():
            p = self.by_name[name]
            if not graph.cuda_graph:
                p.grad = grad
            elif p.grad is None:  # a CUDA graph reuses its output buffers at the next replay: keep copies
                p.grad = grad.clone()
            else:
                p.grad.copy_(grad)
            targets.append(p.grad)
        if self.world.size > 1:  # one all-reduce of all gradients: the sum over the global batch
            flat = torch.cat([g.reshape(-1) for g in targets])
            torch.distributed.all_reduce(flat)
            for g, part in zip(targets, flat.split([g.numel() for g in targets])):
                g.copy_(part.view_as(g))
        return self._global(loss.clone() if graph.cuda_graph else loss)

    def _global(self, loss):
        if self.world.size > 1:
            torch.distributed.all_reduce(loss)
        return loss

    def _tensors(self):
        """The parameters to differentiate, and every other tensor of the module (frozen parameters
        too: tracing on fake tensors needs all of them as inputs)."""
        params, others = {}, dict(self.traced_loss.named_buffers())
        for name, p in self.by_name.items():
            (params if p.requires_grad else others)[name] = p.detach()
        return params, others

    def _trace(self, key, x, uniforms, y, mask):
        if not callable(getattr(self.objective, "reduce", None)):
            # Pyro's own ELBOs read each site's log-density back with .item(): no graph to trace
            raise NotTraceable(f"the objective {type(self.objective).__name__} is not a pyro_vae.objectives.Objective "
                               "(it has no tensor-only reduction of its traces to trace)")
        started = time.perf_counter()
        # a forward pass with throwaway noise finds the guide's noise sites and their shapes (for
        # this process's padded rows: the step draws each for the global batch and cuts its rows)
        probe = noise.StepNoise(0, 0, len(x), slice(None), x.device)
        with torch.no_grad():
            LossModule(self.vae, self.objective)(x if uniforms is None else (uniforms < x).to(x.dtype), y, probe)
        eps = [probe.normal(shape, data_dim, x) for shape, data_dim in probe.draws]
        params, buffers = self._tensors()
        kl_weight = torch.ones((), dtype=x.dtype, device=x.device)
        inputs = (params, buffers, x, uniforms, y, mask, kl_weight, eps)

        def loss(params, buffers, x, uniforms, y, mask, kl_weight, eps):
            return torch.func.functional_call(self.traced_loss, (params, buffers), (x, uniforms, y, mask, kl_weight, eps))

        try:
            traced = make_fx(torch.func.grad_and_value(loss), tracing_mode="fake")(*inputs)
        except Exception as e:  # noqa: BLE001 - any failure to trace means "run eager" under auto
            raise NotTraceable(_why_not_traceable(e)) from e
        cuda_graph = self.backend is not None and x.device.type == "cuda"
        settings = {"mode": "reduce-overhead"} if cuda_graph else {"options": CPU_OPTIONS} if self.backend == "inductor" and x.device.type == "cpu" else {}
        self.graphs[key] = graph = _Graph(traced, probe.draws, cuda_graph, time.perf_counter() - started, len(traced.graph.nodes),
                                          compile_cache.fingerprint(traced, inputs, (self.backend, settings)), settings)
        self.compilations += 1
        return graph

    def _first_call(self, graph, inputs):
        started, hits = time.perf_counter(), compile_cache.hits()
        try:
            if self.backend is not None:  # only now: torch.compile's first use imports dynamo (seconds), which auto may never need
                graph.fn = torch.compile(graph.fn, backend=self.backend, dynamic=False, fullgraph=True, **graph.settings)
            # a CUDA build of torch on a machine without CUDA logs where it looked for it while
            # inductor compiles for the CPU: nothing a user can act on
            # (and inductor's lowering of torch.diagonal, which the full-rank guide uses, warns
            # about a deprecated helper of torch's own)
            with _quiet("torch.utils.cpp_extension"), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch._prims_common.check", category=FutureWarning)
                result = graph.fn(*inputs)
        except Exception as e:  # noqa: BLE001 - no C++ compiler, no inductor on this platform, ...
            cause = getattr(e, "inner_exception", None) or e  # torch.compile wraps the backend's error
            raise NotTraceable(f"the compiler failed ({type(cause).__name__}: {_first_line(cause)})") from e
        graph.checked = True
        seconds = time.perf_counter() - started
        graph.seconds += seconds
        self.compile_seconds += graph.seconds
        cache = ""
        if self.backend is not None:
            warm = compile_cache.hits() > hits
            compile_cache.record(graph.key, graph.nodes, seconds, warm, inputs[2].device.type)
            cache = f" (compile cache {'warm' if warm else 'cold'}, {self.cache})"
        self.log(f"compiled the training step for batches of shape {tuple(inputs[2].shape)} in {graph.seconds:.1f} s{cache}")
        return result


def _length(rows):
    return rows.stop - rows.start


def _pad(t, dim, size):
    """``t`` with zeros appended along ``dim`` up to ``size``."""
    if t.shape[dim] == size:
        return t
    shape = list(t.shape)
    shape[dim] = size - shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim)


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _quiet(logger_name):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"


def _why_not_traceable(e):
    """One line: where the model's Python depends on tensor values, or what else stopped tracing."""
    user = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(_LIBRARY_DIRS)]
    where = f" at {Path(user[-1].filename).name}:{user[-1].lineno} ({user[-1].line})" if user else ""
    if "DataDependent" in type(e).__name__ or "data-dependent" in str(e).lower():
        return f"the model or guide branches on tensor values{where}, so it has no static graph"
    return f"tracing the model and guide failed{where} ({type(e).__name__}: {_first_line(e)})"
