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
its last warm compile took, the next warm compile's estimate.
"""

import hashlib
import json
import os
from pathlib import Path

import torch
from torch._inductor.runtime.cache_dir_utils import default_cache_dir
from torch.utils._pytree import tree_leaves

from .data import DEFAULT_ROOT
from .files import atomic_write_text

ENV = "TORCHINDUCTOR_CACHE_DIR"
DEFAULT = DEFAULT_ROOT / "compile"
# seconds per node of the traced step graph that a compile takes, cold (an empty cache) and warm,
# measured on the development machine (2 CPU cores: the IWAE-paper VAE's step at batch 100, 228
# nodes, compiled cold in about 11 s, warm in about 2.5 s; on one H200 7.6 s and 2.7 s): an
# estimate for graphs this machine has not compiled yet
SECONDS_PER_NODE = {("cpu", False): 0.05, ("cpu", True): 0.011, ("cuda", False): 0.035, ("cuda", True): 0.012}


def location(env):
    """The compile cache's folder: ``TORCHINDUCTOR_CACHE_DIR`` where the user set it, else
    :data:`DEFAULT`. torch writes its temporary default into the variable itself once it has
    looked it up (importing inductor does), so that value counts as unset."""
    chosen = env.get(ENV)
    if chosen and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
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


def _marker(key, env):
    return location(env) / "pyro_vae" / f"{key}.json"


def estimate(key, nodes, device_type, env=os.environ):
    """``(seconds, warm)``: what compiling the graph ``key`` of ``nodes`` nodes will take on
    ``device_type``, and whether the cache holds it: its last warm compile's seconds where one
    was measured, else the per-node figure of :data:`SECONDS_PER_NODE`."""
    marker = _marker(key, env)
    warm = marker.is_file()
    recorded = None
    if warm:
        try:
            recorded = json.loads(marker.read_text()).get("warm_seconds")
        except (OSError, ValueError):  # a marker torn by another process's write: the model instead
            pass
    return (recorded if recorded is not None else nodes * SECONDS_PER_NODE[device_type, warm]), warm


def record(key, seconds, warm, env=os.environ):
    """Note that the graph ``key`` is compiled in the cache now, and, when this compile found it
    there (``warm``), how long that took. A cache folder that cannot be written costs only the estimate."""
    marker = _marker(key, env)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, json.dumps({"warm_seconds": seconds if warm else None}))
    except OSError:
        pass


def hits():
    """How many compiles in this process found their graph in inductor's FX graph cache."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["fxgraph_cache_hit"]
