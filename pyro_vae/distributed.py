"""Data-parallel training with torch.distributed, started by ``torchrun``.

Under torchrun (``WORLD_SIZE`` > 1 in the environment) every process joins one process group
(``nccl`` on GPUs, ``gloo`` on CPU) and takes a contiguous shard of each global batch; the
gradients are all-reduced by ``DistributedDataParallel``. A single process runs the same code
with a world of one.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0

    def shard(self, n):
        """This process's contiguous rows of a global batch of ``n``."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def sum(self, *values, device="cpu"):
        """Sum floats over all processes (returns them unchanged in a world of one)."""
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return tuple(t.tolist())

    def barrier(self):
        if self.size > 1:
            dist.barrier()


def init(device_name):
    """Join the process group torchrun describes, or return a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def wrap(module, world):
    """DistributedDataParallel around ``module`` when there are several processes.

    DDP averages gradients over processes; the loss is a sum over each shard, so the trainer
    scales it by the world size to get the gradient of the sum over the global batch.
    """
    if world.size == 1:
        return module
    device_ids = [world.local_rank] if next(module.parameters()).is_cuda else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()
