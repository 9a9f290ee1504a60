"""The training loop: SVI on the VAE's model and guide, with the whole dataset on the device.

One torch optimizer over the VAE's parameters, and :mod:`pyro_vae.step`'s step (the configured
objective, eager or compiled) for the gradients. The loop never reads a step's loss back from the
device: the losses stay there until the progress bar refreshes and the epoch ends (only
``nan_policy = "skip"`` reads each one, to keep a bad batch from the optimizer). What surrounds
the loop (the run folder, checkpoints, figures) is :mod:`pyro_vae.run`'s.
"""

import math
import time
import warnings
from dataclasses import dataclass, field

import pyro
import torch
from tqdm.auto import tqdm

from . import distributed, noise
from .errors import UserError
from .objectives import MeanFieldELBO, make_objective, monte_carlo_kl_note
from .semisupervised import SemiSupervisedELBO
from .step import Step

PROGRESS_REFRESH_SECONDS = 0.5  # how often the progress bar reads the running ELBO back from the device
METRIC_FIELDS = ("epoch", "step", "train_elbo", "test_elbo", "seconds")


@dataclass
class TrainState:
    """Everything that must survive a restart besides the parameters and the optimizer."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    history: list = field(default_factory=list)  # one dict of METRIC_FIELDS per completed epoch
    skipped: int = 0  # non-finite batches skipped under nan_policy = "skip"


BURDA_STAGES = 8  # Burda et al. 2015: stage i trains 3^i epochs at lr 1e-3 x 10^(-i/7), i = 0..7
BURDA_EPOCHS = sum(3**i for i in range(BURDA_STAGES))  # 3280


def learning_rate(t, epoch):
    """The learning rate of (0-based) ``epoch`` under ``train.lr_schedule``: a function of the epoch
    alone, so a resumed run continues on the schedule exactly, mid-stage or not.

    ``constant``: ``lr * lr_decay ** epoch``. ``burda``: Burda et al.'s stages, ``lr * 10 ** (-i / 7)``
    for the 3^i epochs of stage i (1 + 3 + ... + 2187 = 3280 epochs in all; past them the last
    stage's rate)."""
    if t.lr_schedule == "constant":
        return t.lr * t.lr_decay**epoch
    stage, start = 0, 0
    while stage < BURDA_STAGES - 1 and epoch >= start + 3**stage:
        start += 3**stage
        stage += 1
    return t.lr * 10 ** (-stage / 7)


def make_optimizer(parameters, t):
    """Adam at the schedule's first rate, with ``train.adam_eps`` (the paper's schedule uses 1e-4).

    Fused: one kernel updates every parameter, where torch's default on a CPU runs a few kernels
    per tensor from Python (the IWAE-paper VAE's update: 0.23 ms against 0.75 ms on the 2-core
    CPU, about a tenth of an eager step). A resumed run keeps the variant its checkpoint was
    trained with (``load_state_dict`` restores it), so old runs continue exactly as they began."""
    return torch.optim.Adam(parameters, lr=learning_rate(t, 0), eps=t.adam_eps, fused=True)


def kl_weight(step, warmup_epochs, steps_per_epoch):
    """KL warm-up: the weight of the latent terms at (0-based) ``step``, rising linearly to 1 over
    the first ``warmup_epochs`` epochs (1 throughout when there is no warm-up)."""
    if not warmup_epochs:
        return 1.0
    return min(1.0, (step + 1) / (warmup_epochs * steps_per_epoch))


@torch.no_grad()
def elbo_per_datum(vae, split, batch_size, seed=0, world=distributed.World()):
    """Mean single-sample ELBO over ``split`` in nats per datum (of log p(x), or log p(x | y) for a
    conditional VAE whose labels are inputs only), with a fixed seed so repeated
    evaluations are comparable, and without disturbing the global RNG stream. Under torchrun
    each process scores its shard and the sums are all-reduced, so the mean covers all of it."""
    objective = make_objective("elbo", enumerated=vae.semi_supervised)
    shard = split[world.shard(len(split))]
    total = 0.0
    devices = [split.x.device] if split.x.device.type == "cuda" else []
    with torch.random.fork_rng(devices), pyro.validation_enabled(False), vae.parameters_registered(False):
        torch.manual_seed(seed)
        for start in range(0, len(shard), batch_size):
            batch = shard[start : start + batch_size]
            # a semi-supervised model's bound is on log p(x), its label summed out; a CVAE's on log p(x | y)
            if vae.semi_supervised:  # TraceEnum_ELBO refuses differentiable_loss without gradients
                total -= objective.loss(vae.model, vae.guide, batch.x, None)
            else:
                total -= objective.differentiable_loss(vae.model, vae.guide, batch.x, batch.y).item()
    total, count = world.sum(total, len(shard))
    return total / count


class EpochLosses:
    """The losses of one epoch's steps, kept on the device. :meth:`total` reads them back (a
    synchronization) and raises the ``nan_policy = "stop"`` error naming the first step whose
    loss was not finite: the run stops there, before the epoch's checkpoint is written, so the
    last good checkpoint is kept."""

    def __init__(self, steps, first_step, epoch, device):
        self.values = torch.zeros(steps, dtype=torch.float64, device=device)
        self.count, self.first_step, self.epoch = 0, first_step, epoch

    def add(self, loss):
        self.values[self.count] = loss
        self.count += 1

    def total(self):
        values = self.values[: self.count]
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise UserError(
                f"the loss became {values[i].item()} at step {self.first_step + i + 1} (epoch {self.epoch + 1}); training stopped and the "
                f"last good checkpoint is kept; try a lower train.lr, a larger likelihood scale, or train.nan_policy = \"skip\""
            )
        return values.sum().item()


def train_epoch(train, cfg, state, optimizer, step, world, bar):
    """One pass over ``train`` in the epoch's order; returns (sum of the losses, data seen)."""
    t = cfg.train
    steps_per_epoch = math.ceil(len(train) / t.batch_size)
    device = train.x.device
    order = noise.epoch_order(len(train), cfg.seed, state.epoch, device)
    cycled = labelled_batches(train, cfg, state.epoch, steps_per_epoch)
    losses, seen, refreshed = EpochLosses(steps_per_epoch, state.step, state.epoch, device), 0, time.perf_counter()
    for batch_index, start in enumerate(range(0, len(train), t.batch_size)):
        if t.max_steps and state.step >= t.max_steps:
            break
        idx = order[start : start + t.batch_size]
        if cycled is not None:
            idx = torch.cat([idx, cycled[batch_index]])
        if len(idx) < world.size:  # under torchrun, a final batch smaller than the world
            break
        rows = world.shard(len(idx))
        batch = train[idx[rows]]
        step_noise = noise.StepNoise(cfg.seed, state.epoch * steps_per_epoch + batch_index, len(idx), rows, device)
        loss = step(batch.x, batch.observed_y, step_noise, kl_weight(state.step, t.kl_warmup_epochs, steps_per_epoch))
        bar.update()
        # "skip" must keep a non-finite batch from the optimizer, so it reads every step's loss
        if t.nan_policy == "skip" and not torch.isfinite(loss):
            state.skipped += 1
            continue
        optimizer.step()
        state.step += 1
        losses.add(loss)
        seen += len(idx)
        if not bar.disable and time.perf_counter() - refreshed > PROGRESS_REFRESH_SECONDS:
            bar.set_postfix(elbo=f"{-losses.total() / seen:.2f}", refresh=False)
            refreshed = time.perf_counter()
    return losses.total(), seen


def labelled_batches(train, cfg, epoch, steps_per_epoch):
    """(steps, train.labelled_batch_size) indices of labelled images to add to each of the
    epoch's steps, the labelled set cycled in fresh shuffles; ``None`` when labelled images only
    come mixed among the others in proportion (every label known, or labelled_batch_size = 0)."""
    size = cfg.train.labelled_batch_size
    if train.labelled is None or not size:
        return None
    labelled = train.labelled.nonzero().squeeze(1)  # once an epoch, outside the steps
    picks = noise.labelled_cycle(len(labelled), steps_per_epoch * size, cfg.seed, epoch, labelled.device)
    return labelled[picks].reshape(steps_per_epoch, size)


def make_training_objective(vae, t):
    """The configured objective; for a semi-supervised VAE its enumerated form with the
    supervised term (:mod:`pyro_vae.semisupervised`)."""
    objective = make_objective(t.objective, t.num_particles, enumerated=vae.semi_supervised)
    return SemiSupervisedELBO(objective, vae, t.supervised_weight) if vae.semi_supervised else objective


def fit(vae, ds, cfg, *, state=None, optimizer=None, on_epoch=None, progress=True, world=distributed.World()):
    """Train ``vae`` on ``ds`` (a :class:`data.Dataset` already on the VAE's device) as
    ``cfg.train`` says. ``on_epoch(state, optimizer)`` runs on the main process after every epoch
    (checkpointing). Returns the state.

    Every global batch of ``train.batch_size`` is split over the ``world``'s processes; the random
    numbers of a batch depend only on (seed, batch number) (see :mod:`pyro_vae.noise`), so the
    parameters do not depend on how many processes share the work, nor on restarts.
    """
    t = cfg.train
    state = state or TrainState()
    optimizer = optimizer or make_optimizer(vae.parameters(), t)
    steps = (t.epochs - state.epoch) * math.ceil(len(ds.train) / t.batch_size)
    if t.max_steps:
        steps = max(0, min(steps, t.max_steps - state.step))
    step = Step(vae, make_training_objective(vae, t), dynamic_binarization=cfg.data.binarize == "dynamic",
                compile=t.compile, world=world, steps=steps, batch_size=min(t.batch_size, len(ds.train)))
    report = progress and world.is_main
    if vae.semi_supervised and t.objective == "mean_field" and report:
        step.log("train.objective = mean_field: with the label enumerated, Pyro's TraceEnum_ELBO estimates KL(q(z|x,y) || p(z)) "
                 "by Monte Carlo, as train.objective = elbo does")
    elif isinstance(step.objective, MeanFieldELBO) and report:
        first = ds.train[:1]
        if note := monte_carlo_kl_note(vae, first.x, first.y):
            step.log(note)
    vae.train()
    while state.epoch < t.epochs and not (t.max_steps and state.step >= t.max_steps):
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(t, state.epoch)
        # disable=None: a bar on a terminal; in a log, only the one line per epoch below
        bar = tqdm(total=math.ceil(len(ds.train) / t.batch_size), desc=f"epoch {state.epoch + 1}/{t.epochs}",
                   disable=None if report else True, leave=False)
        with warnings.catch_warnings():
            # a non-finite loss is reported as one line; Pyro's own two-line warning (eager) would precede it
            warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
            loss_sum, seen = train_epoch(ds.train, cfg, state, optimizer, step, world, bar)
        bar.close()
        state.epoch += 1
        vae.eval()
        test_elbo = elbo_per_datum(vae, ds.test, t.eval_batch_size, cfg.seed, world)
        vae.train()
        row = dict(epoch=state.epoch, step=state.step, train_elbo=-loss_sum / max(seen, 1), test_elbo=test_elbo,
                   seconds=time.perf_counter() - started)
        state.history.append(row)
        if report:
            skipped = f", {state.skipped} non-finite batches skipped" if state.skipped else ""
            tqdm.write(f"epoch {state.epoch}: train ELBO {row['train_elbo']:.2f}, test ELBO {test_elbo:.2f} nats/datum, {row['seconds']:.1f}s{skipped}")
        if on_epoch is not None and world.is_main:
            on_epoch(state, optimizer)
        world.barrier()
    vae.eval()
    return state
