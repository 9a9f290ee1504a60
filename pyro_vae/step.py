"""The training step: Pyro's eager objective, its traced graph run op by op, or that graph compiled.

A :class:`Step` takes one batch of grey or binary images, binarizes it when binarization is
dynamic, evaluates the configured objective on the VAE's Pyro model and guide, and leaves the
gradient of the loss in each parameter's ``.grad`` for the caller's optimizer. It returns the
loss as a 0-dim tensor on the device and never reads it back to the host. It runs one of three
ways (``Step.path``):

* ``"eager"``: Pyro's own ``objective.differentiable_loss`` under :class:`noise.StepNoise` and
  :class:`objectives.LatentScale`, then autograd. Every call re-runs Pyro's effect handlers in
  Python (and Pyro's ``Trace_ELBO`` family reads every site's log-density back with ``.item()``).
* ``"traced"``: the same loss traced once into a graph of tensor operations (``make_fx`` on fake
  tensors of ``torch.func.functional_call`` of :class:`TracedLoss`, which takes the objective's
  one tensor-only reduction of the traces, :meth:`objectives.Objective.reduce`, the same call as
  eager), above autograd (``pre_dispatch``, so that the estimators' ``detach`` stays), its dead
  code and the identities of Pyro's broadcasting and scaling removed (:mod:`pyro_vae.simplify`),
  then run op by op on the real parameters, with autograd for the gradients: Pyro's handlers, its
  distributions' Python, the log-densities no term uses and the no-op nodes are paid once, at the
  trace, instead of at every step. An objective that registers gradient hooks on tensors
  (DReG's and PIWAE's reweighted path channel) has no such graph, since the hooks live on the
  tensors and not in it; uncompiled, it runs eager.
* ``"compiled"``: the gradient and value of the loss (``torch.func.grad_and_value`` over the same
  call, traced by ``make_fx`` on fake tensors; ``torch.func`` runs the gradient hooks as it
  traces, so they are in this graph) compiled by inductor (on CUDA replayed as a CUDA graph,
  ``mode="reduce-overhead"``).

In the traced graph the binarization uniforms, the guide's standard-normal noise and the KL
weight are inputs (:class:`noise.GivenNoise`). The random numbers are drawn outside the graph from
the step's :class:`noise.StepNoise` in the eager order (uniforms first, then each latent site's
noise), so all three paths see the same numbers and give the same loss and gradients up to float
rounding. Tracing on fake tensors makes data-dependent Python control flow (``if x.sum() > 0``
in a user's encoder) an error rather than one branch silently baked in; ``compile = "auto"``
then runs eager and says why, once.

One graph per run: a batch shorter than the run's batch (an epoch's last) is padded to it with
rows that ``poutine.mask`` leaves out of every site's log-density, so the loss and gradients are
the short batch's, as are its random numbers (drawn for the short batch, then padded with zeros).

``compile = "auto"`` compiles only where it pays (:func:`compile_pays`): it runs the run's first
steps traced and timed, models the compiled step as :data:`COMPILED_STEP_RATIO` of that, and
weighs the saving over the steps left against what the compile will cost
(:mod:`pyro_vae.compile_cache`: cold, or warm when the cache already holds the graph), in one log
line; where compiling does not pay it goes on traced.
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
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from . import compile_cache, distributed, noise
from .config import COMPILE_MODES
from .errors import UserError
from .objectives import LatentScale
from .simplify import remove_identities

# frames in these folders are the machinery; the first frame outside them is the user's code
_LIBRARY_DIRS = tuple(str(Path(m.__file__).parent) for m in (torch, pyro, contextlib)) + (str(Path(__file__).parent),)

# a compiled step's time as a fraction of the uncompiled step's that ``auto`` timed, at batch 100:
# the traced step's, or Pyro's eager step's where the objective's gradient hooks keep it eager.
# CPU: the shared 2 cores, the paths alternated in one process (benchmarks/step_paths.py, two runs
# at e2609ab: compiled 0.78 and 0.88 of traced, 0.72 and 0.77 of eager; with the traced graph's
# identities removed, daad3f7: 0.79 and 0.80 of traced; docs/benchmarks.md): what
# the compiled step saves is inductor's fused kernels against torch's per-op dispatch (and against
# eager Pyro's Python too). CUDA: an H200's compiled epochs were 0.26 of Pyro's eager ones (one CUDA
# graph launch against a launch per kernel); the traced step keeps the launches and sheds only the
# Python, so against it the ratio is put at 0.4 (not measured: no GPU since the traced path was written)
COMPILED_STEP_RATIO = {"cpu": {"traced": 0.85, "eager": 0.75}, "cuda": {"traced": 0.4, "eager": 0.3}}
TIMED_STEPS = 5  # traced steps timed before ``auto`` decides; the fastest of them is the estimate
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
class _Traced:
    """The loss traced for one input shape: ``fn(params, buffers, x, uniforms, y, rows, kl_weight, eps)``
    returns it, through tensor operations alone (autograd's ``detach`` and grad modes kept);
    ``draws`` are the noise shapes it takes, in order, for this process's rows."""

    fn: object  # a torch.fx.GraphModule
    draws: list


@dataclass
class _Graph:
    """A compiled step for one input shape: ``fn(params, buffers, x, uniforms, y, rows, kl_weight, eps)``
    returns (gradients by parameter name, loss); ``draws`` as the traced loss's."""

    fn: object  # the traced graph, under torch.compile from its first call
    draws: list
    cuda_graph: bool  # replayed as a CUDA graph, whose outputs the next replay overwrites
    seconds: float  # spent tracing and compiling; inductor compiles on the first call
    nodes: int  # in the traced graph: what the compile's cost is estimated from
    key: str  # compile_cache.fingerprint of the graph
    settings: dict  # torch.compile's mode or options, applied at the first call
    checked: bool = False  # whether a first call went through (it may still fail to compile)


class NotTraceable(Exception):
    """Why this model cannot run traced or compiled: one line for the log or the ``UserError``."""


class CompileFailed(NotTraceable):
    """The model traced, but the compiler failed on its graph."""


class GradientHooks(Exception):
    """The objective shapes its gradient with hooks on tensors (DReG's, PIWAE's reweighted path
    channel), which a graph of the loss does not hold: ``torch.func`` traces them into the
    compiled step's gradient graph, but the traced loss under autograd would lose them."""


class _HookSpy(TorchFunctionMode):
    """Raises :class:`GradientHooks` at the first ``Tensor.register_hook`` while the loss is traced."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.register_hook:
            raise GradientHooks()
        return func(*args, **(kwargs or {}))


class Step:
    """The training step for one (VAE, objective, compile mode, device); see the module docstring.

    ``compile``: ``"off"`` always Pyro's eager step; ``"on"`` compiled or a ``UserError``;
    ``"auto"`` compiled where the model traces into a static graph, the compiler works and, when
    ``steps`` (the steps this run will take) is given, compiling pays for itself over them
    (:func:`compile_pays`); else traced where the loss traces without gradient hooks, else eager,
    with one log line saying why. ``path`` says which runs now: ``"eager"``, ``"traced"`` or
    ``"compiled"``. ``batch_size``: the global rows of the run's full batch, to which a traced or
    compiled step pads a shorter one (``None``: no padding, one graph per shape). ``backend`` is
    ``torch.compile``'s (``None`` runs the compiled path's gradient graph as it is, without a
    compiler). ``compilations`` counts the gradient graphs traced for compiling and
    ``compile_seconds`` the time spent tracing and compiling them.

    Build it once the VAE is on its device. Under torchrun the gradients and the returned loss
    cover the global batch: DistributedDataParallel all-reduces them eager, the step itself
    traced or compiled.
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
        # once: walking the modules for their tensors at every step costs a tenth of a millisecond
        self.by_name, self.buffers = dict(self.traced_loss.named_parameters()), dict(self.traced_loss.named_buffers())
        self.traces, self.graphs, self.masks = {}, {}, {}
        self.padded_rows = None if batch_size is None else _length(world.shard(batch_size))
        # an objective that has no static graph (the semi-supervised one's enumeration) says why
        untraceable = getattr(objective, "eager_reason", None)
        if untraceable and compile == "on":
            raise UserError(f"train.compile = on but the training step cannot be compiled: {untraceable}; use train.compile = auto or off")
        if untraceable and compile == "auto":
            self.log(f"training eager, not compiled (train.compile = auto): {untraceable}")
        # under auto with a known length the first steps run uncompiled and timed, then it decides
        deciding = compile == "auto" and steps is not None and not untraceable
        self.steps, self.timings = steps, [] if deciding else None
        self.path = "eager" if compile == "off" or untraceable else "traced" if deciding else "compiled"
        if compile != "off" and not untraceable and backend is not None:
            self.cache = compile_cache.use()
        self.compilations, self.compile_seconds = 0, 0.0

    @property
    def compiled(self):
        """Whether steps run compiled (until a model turns out not to trace, or compiling not to
        pay, under ``auto``)."""
        return self.path == "compiled"

    def __call__(self, x, y, step_noise, kl_weight=1.0):
        """One step on this process's rows ``x`` (grey when binarization is dynamic), labels ``y``
        (or ``None``) of the global batch that ``step_noise`` (a :class:`noise.StepNoise`) draws
        the random numbers of: sets each parameter's ``.grad`` to the gradient of the global
        batch's loss and returns that loss (0-dim, on the device)."""
        with pyro.validation_enabled(False), self.vae.parameters_registered(False):
            uniforms = step_noise.uniforms(x) if self.dynamic else None
            if self.timings is None:
                return self._step(x, uniforms, y, step_noise, kl_weight)
            # a few steps of a run, once: on a GPU the timing waits for the device
            _synchronize(x.device)
            started = time.perf_counter()
            loss = self._step(x, uniforms, y, step_noise, kl_weight)
            _synchronize(x.device)
            if self.timings is not None:  # still deciding: the model traced
                self.timings.append(time.perf_counter() - started)
                if len(self.timings) == min(TIMED_STEPS, self.steps):
                    self._decide(*self._padded(x, uniforms, y))
            return loss

    def _step(self, x, uniforms, y, step_noise, kl_weight):
        """The step on the current path; under ``auto`` a model that turns out not to trace, or
        not to compile, falls back to a path that works, with one log line."""
        try:
            if self.path == "compiled":
                return self._compiled_step(*self._padded(x, uniforms, y), step_noise, kl_weight)
            if self.path == "traced":
                return self._traced_step(*self._padded(x, uniforms, y), step_noise, kl_weight)
        except GradientHooks:
            self.path = "eager"  # no line yet: compiling may still pay
        except NotTraceable as e:
            if self.compile == "on":
                raise UserError(f"train.compile = on but the training step cannot be compiled: {e}; use train.compile = auto or off") from None
            self.graphs.clear()
            self.timings, self.path, loss = None, "eager", None
            if isinstance(e, CompileFailed):  # a graph the compiler cannot build still runs traced
                with contextlib.suppress(GradientHooks):
                    loss, self.path = self._traced_step(*self._padded(x, uniforms, y), step_noise, kl_weight), "traced"
            self.log(f"training {self.path}, not compiled (train.compile = auto): {e}")
            if loss is not None:
                return loss
        binary = x if uniforms is None else (uniforms < x).to(x.dtype)
        return self._eager_step(binary, y, step_noise, kl_weight)

    def _eager_step(self, x, y, step_noise, kl_weight):
        for p in self.vae.parameters():
            p.grad = None
        loss = self.eager_loss(x, y, step_noise, kl_weight)
        # DDP averages the processes' gradients; each loss is a sum over a shard, so scale to the sum
        (loss * self.world.size).backward()
        return self._global(loss.detach())

    def _traced_step(self, key, x, uniforms, y, mask, step_noise, kl_weight):
        traced = self.traces.get(key) or self._trace_loss(key, x, uniforms, y, mask)
        params, buffers = self._tensors(detach=False)
        for p in params.values():
            p.grad = None
        loss = traced.fn(params, buffers, x, uniforms, y, mask, self._kl_weight(kl_weight, x), self._noise(traced.draws, step_noise, x))
        loss.backward()
        self._sum_gradients([p.grad for p in params.values() if p.grad is not None])
        return self._global(loss.detach())

    def _decide(self, key, x, uniforms, y, mask):
        """``auto``, after the timed steps: compile from the next step on, or stay on the
        uncompiled path, by :func:`compile_pays`, in one log line (every process decides alike
        from the same numbers)."""
        timings, self.timings = self.timings, None
        steps_left = self.steps - len(timings)
        try:
            graph = self._trace(key, x, uniforms, y, mask)
        except NotTraceable as e:
            self.log(f"training {self.path}, not compiled (train.compile = auto): {e}")
            return
        seconds, warm = compile_cache.estimate(graph.key, graph.nodes, x.device.type)
        fastest, seconds, warm = (v / self.world.size for v in self.world.sum(min(timings), seconds, float(warm)))
        ratios = COMPILED_STEP_RATIO.get(x.device.type, COMPILED_STEP_RATIO["cpu"])
        saving = fastest * (1 - ratios[self.path])
        pays = compile_pays(steps_left, seconds, saving)
        cache = "warm" if warm == 1 else "cold"
        self.log(f"train.compile = auto: {'compiling the training step' if pays else f'training {self.path}, not compiled'}: the "
                 f"{steps_left} steps left would save about {steps_left * saving:.1f} s compiled ({saving * 1e3:.2f} ms of each "
                 f"{fastest * 1e3:.2f} ms {self.path} step), {'more' if pays else 'less'} than compiling costs (about {seconds:.1f} s, "
                 f"compile cache {cache})")
        if pays:
            self.path = "compiled"
        else:
            self.graphs.clear()
            self.compilations = 0

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

    @staticmethod
    def _noise(draws, step_noise, x):
        """The step's standard-normal noise for a graph: the short batch's numbers, drawn for its
        global rows, padded with zeros to the graph's."""
        return [_pad(step_noise.normal(shape[:d] + (step_noise.global_size,) + shape[d + 1 :], d, x), d, shape[d]) for shape, d in draws]

    @staticmethod
    def _kl_weight(kl_weight, x):
        # a fill, not a copy from the host: no synchronization with the device
        return torch.full((), kl_weight, dtype=x.dtype, device=x.device)

    def _compiled_step(self, key, x, uniforms, y, mask, step_noise, kl_weight):
        graph = self.graphs.get(key) or self._trace(key, x, uniforms, y, mask)
        params, buffers = self._tensors()
        drawn = None if graph.checked else step_noise.generator.get_state()
        inputs = (params, buffers, x, uniforms, y, mask, self._kl_weight(kl_weight, x), self._noise(graph.draws, step_noise, x))
        if graph.cuda_graph:  # a new training iteration: the last replay's outputs are dead (copied below)
            torch.compiler.cudagraph_mark_step_begin()
        try:
            grads, loss = graph.fn(*inputs) if graph.checked else self._first_call(graph, inputs)
        except CompileFailed:
            step_noise.generator.set_state(drawn)  # the path that takes this step over draws its noise again
            raise
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
        self._sum_gradients(targets)
        return self._global(loss.clone() if graph.cuda_graph else loss)

    def _sum_gradients(self, grads):
        """Under torchrun, one all-reduce of all of this process's gradients: the sum over the global batch."""
        if self.world.size > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))

    def _global(self, loss):
        if self.world.size > 1:
            torch.distributed.all_reduce(loss)
        return loss

    def _tensors(self, detach=True):
        """The parameters to differentiate, and every other tensor of the module (frozen parameters
        too: tracing on fake tensors needs all of them as inputs); detached for ``torch.func``,
        as they are for autograd."""
        params, others = {}, dict(self.buffers)
        for name, p in self.by_name.items():
            if p.requires_grad:
                params[name] = p.detach() if detach else p
            else:
                others[name] = p.detach()
        return params, others

    def _probe(self, x, uniforms, y, mask, detach):
        """The traced loss's inputs (its parameters detached for ``torch.func``, as they are for
        autograd): a forward pass with throwaway noise finds the guide's noise sites and their
        shapes (for this process's padded rows: the step draws each for the global batch and cuts
        its rows)."""
        if not callable(getattr(self.objective, "reduce", None)):
            # Pyro's own ELBOs read each site's log-density back with .item(): no graph to trace
            raise NotTraceable(f"the objective {type(self.objective).__name__} is not a pyro_vae.objectives.Objective "
                               "(it has no tensor-only reduction of its traces to trace)")
        probe = noise.StepNoise(0, 0, len(x), slice(None), x.device)
        with torch.no_grad():
            LossModule(self.vae, self.objective)(x if uniforms is None else (uniforms < x).to(x.dtype), y, probe)
        eps = [probe.normal(shape, data_dim, x) for shape, data_dim in probe.draws]
        return probe.draws, (*self._tensors(detach), x, uniforms, y, mask, torch.ones((), dtype=x.dtype, device=x.device), eps)

    def _loss(self):
        """The traced loss as a function of all its tensors (``make_fx`` traces a function, not a method)."""

        def loss(params, buffers, x, uniforms, y, mask, kl_weight, eps):
            return torch.func.functional_call(self.traced_loss, (params, buffers), (x, uniforms, y, mask, kl_weight, eps))

        return loss

    def _trace_loss(self, key, x, uniforms, y, mask):
        """The loss alone, traced above autograd (``pre_dispatch``, so that its ``detach`` stays),
        on parameters that require gradients, with the identities Pyro's broadcasting and scaling
        leave (:mod:`pyro_vae.simplify`) and the dead code (the log-densities no term of the
        objective uses) removed."""
        draws, inputs = self._probe(x, uniforms, y, mask, detach=False)
        try:
            with _HookSpy():
                fn = make_fx(self._loss(), tracing_mode="fake", pre_dispatch=True)(*inputs)
        except GradientHooks:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to trace means "run eager" under auto
            raise NotTraceable(_why_not_traceable(e)) from e
        remove_identities(fn)
        self.traces[key] = traced = _Traced(fn, draws)
        return traced

    def _trace(self, key, x, uniforms, y, mask):
        """The gradient and value of the loss, traced through ``torch.func`` (which runs the
        objective's gradient hooks as it traces), for the compiler."""
        started = time.perf_counter()
        draws, inputs = self._probe(x, uniforms, y, mask, detach=True)
        try:
            traced = make_fx(torch.func.grad_and_value(self._loss()), tracing_mode="fake")(*inputs)
        except Exception as e:  # noqa: BLE001 - any failure to trace means "run eager" under auto
            raise NotTraceable(_why_not_traceable(e)) from e
        cuda_graph = self.backend is not None and x.device.type == "cuda"
        settings = {"mode": "reduce-overhead"} if cuda_graph else {"options": CPU_OPTIONS} if self.backend == "inductor" and x.device.type == "cpu" else {}
        self.graphs[key] = graph = _Graph(traced, draws, cuda_graph, time.perf_counter() - started, len(traced.graph.nodes),
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
            raise CompileFailed(f"the compiler failed ({type(cause).__name__}: {_first_line(cause)})") from e
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
