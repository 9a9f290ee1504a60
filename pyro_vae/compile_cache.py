"""Where torch's compile cache lives, whether it already holds a graph, and what compiling costs.

inductor keeps what it compiles (the FX graph cache, AOT autograd's cache, the C++ kernels, the
CPU's instruction-set probes, Triton's kernels) under ``TORCHINDUCTOR_CACHE_DIR``, by default a
folder in the system's temporary directory, which a reboot empties. The training step points it
beside the downloaded MNIST instead (``~/.cache/pyro_vae/compile``) unless the user chose a
folder with torch's own ``TORCHINDUCTOR_CACHE_DIR``: that variable is the override. (Not a config
key: a run's config records an experiment, and a cache folder is the machine's, not the run's.)

inductor keys its cache by the graph after dynamo and AOT autograd have run, too late to decide
whether compiling pays. So beside it the step keeps one small file per traced graph, named by a
hash of the graph's code, its inputs' shapes and types, torch's version and the compile settings:
it exists once that graph has been compiled here (the cache is warm for it) and holds the seconds
its last warm compile took, the next warm compile's estimate. A cold compile's estimate is the
graph's size times the seconds per node of this machine's last cold compile (``cold.json``), or
of the development machine's before there was one here.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from torch.utils._pytree import tree_leaves

from .data import DEFAULT_ROOT
from .files import atomic_write_text

ENV = "TORCHINDUCTOR_CACHE_DIR"
DEFAULT = DEFAULT_ROOT / "compile"
# seconds per node of the traced step graph that a compile takes, cold (an empty cache) and warm,
# measured on the development machine (2 shared CPU cores: the IWAE-paper VAE's step at batch
# 100, 237 nodes, compiled cold in 13.4 s, warm in 2.1 s; on one H200, torch 2.11, 7.6 s and
# 2.7 s): the estimate until this machine has measured its own
SECONDS_PER_NODE = {("cpu", False): 0.05, ("cpu", True): 0.01, ("cuda", False): 0.035, ("cuda", True): 0.012}


def location(env):
    """The compile cache's folder: ``TORCHINDUCTOR_CACHE_DIR`` where the user set it, else
    :data:`DEFAULT`. torch writes its temporary default into the variable itself once it has
    looked it up (importing inductor does), so that value counts as unset."""
    chosen = env.get(ENV)
    # importing inductor takes seconds, which a run that ends up eager should not pay: until it
    # is imported, torch has written nothing into the variable
    utils = sys.modules.get("torch._inductor.runtime.cache_dir_utils")
    if chosen and (utils is None or os.path.abspath(chosen) != os.path.abspath(utils.default_cache_dir())):
        return Path(chosen)
    return DEFAULT


def use(env=os.environ):
    """Point inductor at :func:`location`; call it before anything compiles. Returns the folder."""
    folder = location(env)
    env[ENV] = str(folder)
    return folder


def fingerprint(graph_module, inputs, settings):
    """What decides the compiled code: the traced graph, its inputs' shapes, types and devices,
    torch's version and the compile ``settings`` (backend, mode, options)."""
    meta = [(tuple(t.shape), str(t.dtype), t.device.type) if torch.is_tensor(t) else repr(t) for t in tree_leaves(inputs)]
    text = json.dumps([graph_module.code, meta, torch.__version__, repr(settings)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _marker(name, env):
    return location(env) / "pyro_vae" / f"{name}.json"


def _read(marker, field):
    try:
        return json.loads(marker.read_text()).get(field)
    except (OSError, ValueError):  # absent, or unreadable: the estimate falls back to the model
        return None


def _write(marker, fields):
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, json.dumps(fields))
    except OSError:  # a cache folder that cannot be written costs only the estimate
        pass


def estimate(key, nodes, device_type, env=os.environ):
    """``(seconds, warm)``: what compiling the graph ``key`` of ``nodes`` nodes will take on
    ``device_type``, and whether the cache holds it. Warm: the graph's last warm compile's
    seconds where one was measured; cold: this machine's last cold compile's seconds per node;
    else :data:`SECONDS_PER_NODE`."""
    marker = _marker(key, env)
    warm = marker.is_file()
    recorded = _read(marker, "warm_seconds") if warm else _read(_marker(f"cold-{device_type}", env), "seconds_per_node")
    if warm and recorded is not None:
        return recorded, True
    return nodes * (recorded or SECONDS_PER_NODE[device_type, warm]), warm


def record(key, nodes, seconds, warm, device_type, env=os.environ):
    """Note that the graph ``key`` (of ``nodes`` nodes) is in the cache now, compiled in
    ``seconds`` on ``device_type``: a warm compile's time for the next, a cold one's per node
    for the next cold estimate."""
    _write(_marker(key, env), {"warm_seconds": seconds if warm else None})
    if not warm:
        _write(_marker(f"cold-{device_type}", env), {"seconds_per_node": seconds / nodes})


def hits():
    """How many compiles in this process found their graph in inductor's FX graph cache."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["fxgraph_cache_hit"]
