"""The training step's three paths in one process: Pyro's eager step, the traced loss run op by
op under autograd, and the compiled gradient graph (pyro_vae.step), on the IWAE-paper VAE at the
shipped defaults (examples/configs/mnist_vae.toml), each doing a whole step with the fused Adam
update, beside the plain-PyTorch step of benchmarks/plain_train.py with torch's default Adam.
The paths alternate in rounds of N steps (each round in the reverse order of the last), and the
table gives each one's median time per step over the rounds and its ratio to the traced step:
what ``compile = "auto"`` models with ``step.COMPILED_STEP_RATIO``. The compile itself is not
timed here (benchmarks/train_step.py times whole processes): the step compiles, or loads from the
compile cache, before the rounds.

    python benchmarks/step_paths.py [--rounds 9] [--steps 200] [--threads 0 (torch's default)] [--paths eager,traced,kept,compiled,plain,plain-compiled]

``plain-compiled`` is the plain step with its loss under ``torch.compile`` and the fused Adam
(benchmarks/plain_train.py --compile --adam fused), and ``kept`` the traced step with the
identities of Pyro's broadcasting and scaling kept in its graph, as it ran before
``pyro_vae/simplify.py``: each is timed only when ``--paths`` asks for it. ``--paths`` times only
those named (more rounds for one comparison; nothing compiles unless a compiled path is named).
Besides each path's median, the table gives the median of its per-round ratios to the traced
step (the two times of a ratio are at most minutes apart, so the machine's drift over the run
cancels out of it).
"""

import argparse
import os
import statistics
import time
from unittest import mock

import torch

from plain_train import mlp, negative_elbo
from pyro_vae import config, noise, step as step_module
from pyro_vae.run import build_vae, load_dataset
from pyro_vae.step import TIMED_STEPS, Step
from pyro_vae.train import make_optimizer, make_training_objective

HERE = os.path.dirname(os.path.abspath(__file__))
PATHS = {"eager": "pyro-vae eager (compile = off)", "traced": "pyro-vae traced", "kept": "pyro-vae traced, identities kept",
         "compiled": "pyro-vae compiled", "plain": "plain PyTorch eager", "plain-compiled": "plain PyTorch, torch.compile"}


def keep_identities(module):
    module.graph.eliminate_dead_code()
    module.recompile()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--paths", default="eager,traced,compiled,plain",
                        type=lambda s: [p for p in s.split(",") if p], help="a comma-separated subset of " + ",".join(PATHS))
    args = parser.parse_args()
    if unknown := set(args.paths) - set(PATHS):
        parser.error(f"--paths: unknown {', '.join(sorted(unknown))}; choose from {','.join(PATHS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config.load(os.path.join(HERE, "..", "examples", "configs", "mnist_vae.toml"))
    ds = load_dataset(cfg)
    x, batch = ds.train.x, cfg.train.batch_size
    torch.manual_seed(0)
    vae = build_vae(cfg, ds.input_dim, ds.num_classes)
    vae.init_from_data(x)
    optimizer = make_optimizer(vae.parameters(), cfg.train)
    objective = make_training_objective(vae, cfg.train)
    # auto with a run's length runs its first steps traced, and stays so when none are left to save on
    builds = {"eager": lambda: Step(vae, objective, dynamic_binarization=True, compile="off"),
              "traced": lambda: Step(vae, objective, dynamic_binarization=True, compile="auto", steps=TIMED_STEPS, batch_size=batch, log=lambda m: None),
              "compiled": lambda: Step(vae, objective, dynamic_binarization=True, compile="on", batch_size=batch, log=print)}
    steps = {path: build() for path, build in builds.items() if path in args.paths}
    if "kept" in args.paths:  # the traced loss as the traced step ran it before pyro_vae/simplify.py: its dead code removed only
        steps["kept"] = builds["traced"]()
        with mock.patch.object(step_module, "remove_identities", keep_identities):
            steps["kept"](x[:batch], None, noise.StepNoise(cfg.seed, 0, batch, slice(None), x.device))  # traces it
    batches = len(x) // batch

    def package(path, i):
        steps[path](x[i * batch : (i + 1) * batch], None, noise.StepNoise(cfg.seed, i, batch, slice(None), x.device))
        optimizer.step()

    def plain(compiled):
        """benchmarks/plain_train.py's step: eager with torch's default Adam, or its loss under
        torch.compile with the fused Adam (the fastest here, as in the train_step.py table)."""
        encoder, decoder = mlp([784, 200, 200, 100]), mlp([50, 200, 200, 784])
        plain_optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3, fused=compiled)
        loss_fn = torch.compile(negative_elbo) if compiled else negative_elbo

        def step(i):
            loss = loss_fn(encoder, decoder, torch.bernoulli(x[i * batch : (i + 1) * batch]))
            plain_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            plain_optimizer.step()

        return step

    runs = {PATHS[path]: plain(path == "plain-compiled") if path.startswith("plain") else (lambda i, path=path: package(path, i))
            for path in PATHS if path in args.paths}
    for run in runs.values():  # the compile, and every path's warm-up
        for i in range(20):
            run(i)
    assert all(step.path == ("traced" if path == "kept" else path) for path, step in steps.items() if path != "eager")
    times = {name: [] for name in runs}
    for round_ in range(args.rounds):
        names = list(runs) if round_ % 2 == 0 else list(runs)[::-1]
        for name in names:
            started = time.perf_counter()
            for i in range(args.steps):
                runs[name]((round_ * args.steps + i) % batches)
            times[name].append((time.perf_counter() - started) / args.steps)
    base = PATHS["traced"] if "traced" in args.paths else next(iter(runs))
    label = "x " + base.removeprefix("pyro-vae ")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; batch {batch}; "
          f"median of {args.rounds} alternating rounds of {args.steps} steps")
    print(f"{'path':<34}{'ms/step':>9}{label:>10}{label + ', per round':>22}  rounds")
    for name, ts in times.items():
        median = statistics.median(ts)
        per_round = statistics.median(t / b for t, b in zip(ts, times[base]))
        print(f"{name:<34}{median * 1e3:>9.2f}{median / statistics.median(times[base]):>10.2f}{per_round:>22.2f}  {' '.join(f'{t * 1e3:.2f}' for t in ts)}")


if __name__ == "__main__":
    main()
