"""Training: SVI on the VAE's model and guide, with the whole dataset on the device.

``fit`` is the loop (one torch optimizer over the VAE's parameters, the objective's
``differentiable_loss``, Pyro validation off in the hot path). ``train_run`` wraps it for a run
folder: resolved config, atomic per-epoch checkpoints with optimizer and RNG state so ``--resume``
continues exactly, ``metrics.csv`` and the figures.
"""

import contextlib
import csv
import io
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from . import checkpoint, data, distributed, noise
from . import config as config_lib
from .data import Split
from .errors import UserError
from .objectives import LatentScale, make_objective

METRIC_FIELDS = ("epoch", "step", "train_elbo", "test_elbo", "seconds")
RUN_FILES = ("config.toml", "checkpoint.pt", "metrics.csv")


def resolve_device(name, option="train.device"):
    """``auto`` -> CUDA when present, else the CPU; ``option`` names the setting in the error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option} is cuda but CUDA is not available here; use {option} auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class TrainState:
    """Everything that must survive a restart besides the parameters themselves."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    history: list = field(default_factory=list)  # one dict of METRIC_FIELDS per completed epoch
    skipped: int = 0  # non-finite batches skipped under nan_policy = "skip"


def epoch_order(n, seed, epoch, device):
    """The shuffle of epoch ``epoch``: a function of (seed, epoch) alone, so a resumed run and
    every process of a distributed one see the same order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


class LossModule(torch.nn.Module):
    """The objective over the VAE's model and guide as a module, so that
    ``DistributedDataParallel`` can wrap it (in a world of one it is called directly)."""

    def __init__(self, vae, objective):
        super().__init__()
        self.vae, self.objective = vae, objective

    def forward(self, x, y, noise, kl_weight=1.0):
        with noise, LatentScale(kl_weight) if kl_weight < 1 else contextlib.nullcontext():
            return self.objective.differentiable_loss(self.vae.model, self.vae.guide, x, y)


@torch.no_grad()
def elbo_per_datum(vae, split, batch_size, seed=0, world=distributed.World()):
    """Mean single-sample ELBO over ``split`` in nats per datum, with a fixed seed so repeated
    evaluations are comparable, and without disturbing the global RNG stream. Under torchrun
    each process scores its shard and the sums are all-reduced, so the mean covers all of it."""
    objective = make_objective("elbo")
    shard = Split(split.x[world.shard(len(split))], None if split.y is None else split.y[world.shard(len(split))])
    total = 0.0
    with torch.random.fork_rng(devices=[split.x.device] if split.x.device.type == "cuda" else []), pyro.validation_enabled(False):
        torch.manual_seed(seed)
        for start in range(0, len(shard), batch_size):
            x = shard.x[start : start + batch_size]
            y = None if shard.y is None else shard.y[start : start + batch_size]
            total -= objective.differentiable_loss(vae.model, vae.guide, x, y).item()
    total, count = world.sum(total, len(shard), device=split.x.device)
    return total / count


def fit(vae, ds, cfg, *, state=None, optimizer=None, on_epoch=None, progress=True, world=distributed.World()):
    """Train ``vae`` on ``ds`` (a :class:`data.Dataset` already on the VAE's device) as ``cfg.train``
    says. ``on_epoch(state, optimizer)`` runs after every epoch (checkpointing). Returns the state.

    Every global batch of ``train.batch_size`` is split over the ``world``'s processes; the random
    numbers of a batch depend only on (seed, batch number) (see :mod:`pyro_vae.noise`), so the
    parameters do not depend on how many processes share the work, nor on restarts. Under
    torchrun, a final batch smaller than the number of processes is dropped.
    """
    t = cfg.train
    state = state or TrainState()
    optimizer = optimizer or torch.optim.Adam(vae.parameters(), lr=t.lr)
    runner = distributed.wrap(LossModule(vae, make_objective(t.objective, t.num_particles)), world)
    train_x, train_y = ds.train.x, ds.train.y
    n, device = len(ds.train), train_x.device
    steps_per_epoch = math.ceil(n / t.batch_size)
    dynamic = cfg.data.binarize == "dynamic"
    progress = progress and world.is_main
    vae.train()
    while state.epoch < t.epochs and not (t.max_steps and state.step >= t.max_steps):
        started, loss_sum, seen = time.perf_counter(), 0.0, 0
        order = epoch_order(n, cfg.seed, state.epoch, device)
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {state.epoch + 1}/{t.epochs}", disable=not progress, leave=False)
        with pyro.validation_enabled(False), vae.parameters_registered(False), warnings.catch_warnings():
            # a non-finite loss is reported below as one line; Pyro's own two-line warning would precede it
            warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
            for batch, start in enumerate(range(0, n, t.batch_size)):
                if t.max_steps and state.step >= t.max_steps:
                    break
                idx = order[start : start + t.batch_size]
                if len(idx) < world.size:
                    break
                rows = world.shard(len(idx))
                generator = noise.step_generator(cfg.seed, state.epoch * steps_per_epoch + batch, device)
                mine = idx[rows]
                x = train_x[mine]
                if dynamic:
                    x = (torch.rand(len(idx), x.shape[1], generator=generator, device=device)[rows] < x).to(x.dtype)
                y = None if train_y is None else train_y[mine]
                kl_weight = min(1.0, (state.step + 1) / (t.kl_warmup_epochs * steps_per_epoch)) if t.kl_warmup_epochs else 1.0
                loss = runner(x, y, noise.ShardNoise(generator, len(idx), rows), kl_weight)
                (value,) = world.sum(loss.item(), device=device)
                if not math.isfinite(value):
                    if t.nan_policy == "stop":
                        raise UserError(
                            f"the loss became {value} at step {state.step + 1} (epoch {state.epoch + 1}); training stopped and the "
                            f"last good checkpoint is kept; try a lower train.lr, a larger likelihood scale, or train.nan_policy = \"skip\""
                        )
                    state.skipped += 1
                    bar.update()
                    continue
                optimizer.zero_grad(set_to_none=True)
                (loss * world.size).backward()
                optimizer.step()
                state.step += 1
                loss_sum += value
                seen += len(idx)
                bar.update()
                if progress:
                    bar.set_postfix(elbo=f"{-value / len(idx):.2f}", refresh=False)
        bar.close()
        for group in optimizer.param_groups:
            group["lr"] *= t.lr_decay
        state.epoch += 1
        vae.eval()
        test_elbo = elbo_per_datum(vae, ds.test, t.eval_batch_size, cfg.seed, world)
        vae.train()
        row = {
            "epoch": state.epoch,
            "step": state.step,
            "train_elbo": -loss_sum / max(seen, 1),
            "test_elbo": test_elbo,
            "seconds": time.perf_counter() - started,
        }
        state.history.append(row)
        if progress:
            skipped = f", {state.skipped} non-finite batches skipped" if state.skipped else ""
            tqdm.write(f"epoch {state.epoch}: train ELBO {row['train_elbo']:.2f}, test ELBO {test_elbo:.2f} nats/datum, {row['seconds']:.1f}s{skipped}")
        if on_epoch is not None and world.is_main:
            on_epoch(state, optimizer)
        world.barrier()
    vae.eval()
    return state


def fit_tensors(vae, x, y=None, x_test=None, y_test=None, overrides=(), progress=True):
    """Train ``vae`` on tensors from Python: ``x`` (N, input_dim), labels ``y`` for a conditional
    VAE, and a held-out ``x_test`` / ``y_test`` (default: the last 10% of ``x``) for the per-epoch
    test ELBO. ``overrides`` are config ``key=value`` strings (``"train.epochs=5"``, and
    ``data.binarize``, default ``"none"`` here: the tensors are used as given). Trains on the
    VAE's device; returns the :class:`TrainState` with its per-epoch history."""
    cfg = config_lib.load(None, ["data.binarize=none", *overrides])
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() != 2:
        raise UserError(f"x must have shape (N, {vae.input_dim}), one flattened datum per row, got {tuple(x.shape)}")
    y = None if y is None else torch.as_tensor(y)
    if x_test is None:
        n_test = max(1, len(x) // 10)
        x, x_test, y, y_test = x[:-n_test], x[-n_test:], None if y is None else y[:-n_test], None if y is None else y[-n_test:]
    ds = data.prepare(data.Dataset(Split(x, y), Split(torch.as_tensor(x_test, dtype=torch.float32), y_test), (1, vae.input_dim), vae.num_classes), cfg.data.binarize, cfg.seed)
    check_data(vae, ds, cfg.data.binarize)
    vae.init_from_data(ds.train.x)
    device = vae.device
    ds = data.Dataset(ds.train.to(device), ds.test.to(device), ds.image_shape, ds.num_classes)
    return fit(vae, ds, cfg, progress=progress)


def load_dataset(cfg):
    """The config's data, binarized as configured, on the CPU (callers move what they use)."""
    ds = data.prepare(data.load(cfg.data), cfg.data.binarize, cfg.seed)
    if cfg.model.conditional and ds.num_classes is None:
        raise UserError("model.conditional = true needs labels; give 'y' in the data file or use MNIST")
    return ds


def check_data(vae, ds, binarize):
    """Bad data is caught here, once, rather than as NaNs halfway through training."""
    for split in (ds.train, ds.test):
        if split.x.shape[1] != vae.input_dim:
            raise UserError(f"the data have {split.x.shape[1]} features per datum but the model expects {vae.input_dim}; use the data the run was trained on")
        if not torch.isfinite(split.x).all():
            raise UserError("the data contain NaN or inf values; clean or drop those rows before training")
        vae.check_labels(split.y, len(split))
        # a dynamic run's training pixels are grey here and become binary when each batch is drawn
        if not (split is ds.train and binarize == "dynamic"):
            vae.likelihood.check(split.x)


def metrics_csv(history):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def prepare_run_dir(out, cfg, resume, overwrite):
    """Refuse to clobber a different run; on resume return the checkpoint to continue from."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; pick a folder for the run")
    has_run = out.is_dir() and any((out / name).exists() for name in RUN_FILES)
    if resume and has_run and not (out / "checkpoint.pt").exists():
        raise UserError(f"--resume: {out} has no checkpoint.pt (the run stopped before its first epoch ended); start it again with --overwrite")
    if resume:
        payload = checkpoint.load(out / "checkpoint.pt")
        stored = config_lib.loads(payload["config"])
        stored.train.epochs, stored.train.max_steps = cfg.train.epochs, cfg.train.max_steps
        if stored != cfg:
            raise UserError(f"--resume: the config differs from the one {out} was trained with (only train.epochs and train.max_steps may change); drop --config/--set or start a new run")
        return payload
    if has_run and not overwrite:
        raise UserError(f"{out} already holds a run; add --resume to continue it, --overwrite to replace it, or choose another --out")
    return None


def train_run(cfg, out, resume=False, overwrite=False, progress=True):
    """Train as ``cfg`` says into run folder ``out``; see the module docstring."""
    out = Path(out)
    payload = prepare_run_dir(out, cfg, resume, overwrite)
    world = distributed.init(cfg.train.device)
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
    pyro.set_rng_seed(cfg.seed)
    ds = load_dataset(cfg)
    if payload is not None and (payload["input_dim"], payload["num_classes"]) != (ds.input_dim, ds.num_classes):
        raise UserError(
            f"--resume: {out} was trained on data of {payload['input_dim']} features per datum ({payload['num_classes'] or 'no'} label classes) "
            f"but the data now have {ds.input_dim} ({ds.num_classes or 'no'} label classes); resume with the data it was trained on or start a new run"
        )
    vae = checkpoint.build_vae(cfg, ds.input_dim, ds.num_classes)
    if payload is None: vae.init_from_data(ds.train.x)
    check_data(vae, ds, cfg.data.binarize)
    ds = data.Dataset(ds.train.to(device), ds.test.to(device), ds.image_shape, ds.num_classes)
    vae.to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg.train.lr)
    state = TrainState()
    if payload is not None:
        checkpoint.load_weights(vae, payload["model"], out / "checkpoint.pt")
        optimizer.load_state_dict(payload["optimizer"])
        state = TrainState(**payload["state"])
    world.barrier()  # every process has checked the run folder before the main one writes to it
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write_text(out / "config.toml", cfg.to_toml())

    def save(state, optimizer):
        checkpoint.save(
            out / "checkpoint.pt",
            {
                "format": checkpoint.FORMAT_VERSION,
                "config": cfg.to_toml(),
                "input_dim": ds.input_dim,
                "num_classes": ds.num_classes,
                "image_shape": list(ds.image_shape),
                "model": vae.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": vars(state).copy(),
            },
        )
        checkpoint.atomic_write_text(out / "metrics.csv", metrics_csv(state.history))

    state = fit(vae, ds, cfg, state=state, optimizer=optimizer, on_epoch=save, progress=progress, world=world)
    if world.is_main:
        from . import plots  # matplotlib and torchvision: only where figures are drawn, not on `import pyro_vae`

        plots.write_run_figures(out, vae, ds, state.history)
    return vae, state
