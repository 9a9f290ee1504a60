"""Where the work runs: the device, and data-parallel training with torch.distributed under ``torchrun``.

Under torchrun (``WORLD_SIZE`` > 1 in the environment) every process joins one process group
(``nccl`` on GPUs, ``gloo`` on CPU) and takes a contiguous shard of each global batch; the
gradients are all-reduced by ``DistributedDataParallel``. A single process runs the same code
with a world of one. :func:`init` is the one place a device is decided.
"""

import inspect
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .errors import UserError


def resolve_device(name, option="train.device"):
    """``auto`` -> CUDA when present, else the CPU; ``option`` names the setting in the error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option} is cuda but CUDA is not available here; use {option} auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class World:
    """The processes training together and this one's place among them. As a context manager it
    tears the process group down on exit, however the block ends."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self):
        return self.rank == 0

    def shard(self, n):
        """This process's contiguous rows of a global batch of ``n``."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def sum(self, *values):
        """Sum floats over all processes (returns them unchanged in a world of one)."""
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return tuple(t.tolist())

    def barrier(self):
        if self.size > 1:
            dist.barrier()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def init(device_name="auto", option="train.device"):
    """Join the process group torchrun describes, or return a world of one, on the device
    ``device_name`` asks for (each process of a multi-GPU world takes its local GPU)."""
    device = resolve_device(device_name, option)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local_rank, device)


def wrap(module, world):
    """DistributedDataParallel around ``module`` when there are several processes.

    DDP averages gradients over processes; the loss is a sum over each shard, so the trainer
    scales it by the world size to get the gradient of the sum over the global batch. The
    module has no buffers that change in training, so none are broadcast.
    """
    if world.size == 1:
        return module
    ddp = torch.nn.parallel.DistributedDataParallel
    # torch 2.14 renamed the option (and warns on the old name in every process)
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else "broadcast_buffers"
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    return ddp(module, device_ids=device_ids, **{no_sync: False})
