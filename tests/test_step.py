"""The training step: the traced loss under autograd and the traced gradient graph compute the
loss and gradients of Pyro's own objective on the same random numbers, for every prior,
likelihood and objective; inductor compiles it once per shape; runs compiled resume exactly;
models that cannot be traced run eager with one line."""

import pytest
import torch

from helpers import assert_same_weights, random_weights, small_config
from pyro_vae import VAE, UserError, compile_cache, config, noise
from pyro_vae.data import DEFAULT_ROOT
from pyro_vae.data import load_dataset
from pyro_vae.objectives import OBJECTIVES as OBJECTIVE_REGISTRY
from pyro_vae.objectives import make_objective
from pyro_vae.run import build_vae, fit_tensors, train_run
from pyro_vae.step import TIMED_STEPS, Step, compile_pays
from pyro_vae.train import EpochLosses, fit

PRIORS = ["normal", "learned_normal", {"type": "mixture", "components": 3}, {"type": "vamp", "components": 4}]
LIKELIHOODS = ["bernoulli", "continuous_bernoulli", {"type": "gaussian", "scale": 0.5}, "gaussian", "laplace"]
OBJECTIVES = [("elbo", 1), ("mean_field", 1), ("iwae", 3)]
# the estimators of tests/test_objectives.py, whose traced steps are checked here with the others
ESTIMATORS = [("stl", 3), ("dreg", 4), ({"type": "miwae", "bounds": 2}, 4), ({"type": "piwae", "bounds": 2}, 4), ({"type": "ciwae", "beta": 0.3}, 4)]


GUIDES = ["full_rank", {"type": "iaf", "flows": 2, "hidden": [8], "context": 4}]


def tiny_vae(prior="normal", likelihood="bernoulli", num_classes=None, encoder=None, guide="diagonal", layers=()):
    return VAE(12, 3, prior=prior, likelihood=likelihood, encoder=encoder or {"hidden": [8]}, decoder={"hidden": [8]},
               num_classes=num_classes, guide=guide, layers=layers)


def step_noise(x, step):
    return noise.StepNoise(0, step, len(x), slice(None), x.device)


# the objectives that shape their gradient with hooks on tensors: their traced loss would lose them
GRADIENT_HOOKS = {"dreg", "piwae"}


def loss_and_grads(vae, objective, particles, compile, x, y=None, kl_weight=1.0, backend=None, dynamic=True, batch=0, steps=None):
    """One step on ``x`` through a fresh Step; the loss and a copy of every gradient. ``compile =
    "auto"`` with ``steps``: the first of the run's steps, which runs uncompiled (traced) and timed."""
    step = Step(vae, make_objective(objective, particles), dynamic_binarization=dynamic, compile=compile, backend=backend, steps=steps)
    loss = step(x, y, step_noise(x, batch), kl_weight=kl_weight)
    return loss, {name: p.grad.clone() for name, p in vae.named_parameters()}, step


def assert_static_shapes(step):
    """Every size in the traced graph is known from the input shapes alone. A size that depends on
    tensor values (boolean-mask indexing traces to aten.nonzero) is a symbol that inductor may not
    lower: on CUDA with torch 2.11 the full-rank guide's mask-filled Cholesky factor failed to
    compile so."""
    for graph in step.graphs.values():
        for node in graph.fn.graph.nodes:
            values = node.meta.get("val")
            for value in values if isinstance(values, (list, tuple)) else [values]:
                if isinstance(value, torch.Tensor):
                    assert all(isinstance(size, int) for size in value.shape), (node.format_node(), value.shape)


def assert_same_step(vae, objective, particles, x, y=None, kl_weight=1.0, backend=None, dynamic=True):
    """The compiled step, and the traced one (``auto``'s first steps; Pyro's eager step for an
    objective with gradient hooks), each against Pyro's eager step."""
    eager_loss, eager_grads, _ = loss_and_grads(vae, objective, particles, "off", x, y, kl_weight, dynamic=dynamic)
    loss, grads, step = loss_and_grads(vae, objective, particles, "on", x, y, kl_weight, backend, dynamic)
    assert step.compiled and step.compilations == 1
    if backend is None:
        assert_static_shapes(step)
    traced = loss_and_grads(vae, objective, particles, "auto", x, y, kl_weight, backend, dynamic, steps=10**9)
    hooked = (objective if isinstance(objective, str) else objective["type"]) in GRADIENT_HOOKS
    assert traced[2].path == ("eager" if hooked else "traced") and traced[2].compilations == 0
    for loss, grads in (loss, grads), traced[:2]:
        assert loss.shape == () and torch.isfinite(loss)
        assert loss.item() == pytest.approx(eager_loss.item(), rel=1e-5)
        assert grads.keys() == eager_grads.keys()
        for name, grad in grads.items():
            assert torch.allclose(grad, eager_grads[name], rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("objective, particles", OBJECTIVES)
@pytest.mark.parametrize("likelihood", LIKELIHOODS, ids=str)
@pytest.mark.parametrize("prior", PRIORS, ids=str)
def test_the_traced_step_equals_pyros_objective(prior, likelihood, objective, particles):
    torch.manual_seed(0)
    dynamic = likelihood == "bernoulli"  # grey pixels for the others
    # float64: the two paths add the same terms in other orders, and in float32 a gradient element
    # near zero keeps the rounding of the large terms that cancel in it
    x = torch.rand(10, 12, dtype=torch.float64)
    # a KL weight below 1 (warm-up) scales the latent sites: eager through a messenger, traced as an input
    assert_same_step(tiny_vae(prior, likelihood).double(), objective, particles, x, kl_weight=0.5, dynamic=dynamic)


@pytest.mark.parametrize("objective, particles", OBJECTIVES + ESTIMATORS, ids=str)
@pytest.mark.parametrize("prior", [PRIORS[0], PRIORS[3]], ids=str)
@pytest.mark.parametrize("guide", ["diagonal", *GUIDES], ids=str)
def test_the_traced_step_equals_eager_for_every_objective_and_guide_family(guide, prior, objective, particles):
    # the step's noise goes through the family's Cholesky factor or flow, in the graph as eagerly;
    # KL warm-up's weight scales the estimators' re-scored guide densities as it does the others
    torch.manual_seed(0)
    vae = tiny_vae(prior, guide=guide).double()
    random_weights(vae, 0.3)
    assert_same_step(vae, objective, particles, torch.rand(10, 12, dtype=torch.float64), kl_weight=0.5)


def test_the_traced_conditional_step_with_particles_equals_pyros_objective():
    x, y = torch.rand(10, 12), torch.arange(10) % 4
    for prior in PRIORS:  # the VampPrior's pseudo-inputs carry labels in a conditional VAE
        assert_same_step(tiny_vae(prior, num_classes=4), "elbo", 2, x, y)


def test_the_inductor_compiled_step_equals_pyros_objective():
    # the compiled runs below cover the conditional VAE with warm-up; this one a learned prior,
    # a learned likelihood scale and vectorized particles (each compile costs seconds on CI)
    vae = tiny_vae({"type": "vamp", "components": 4}, "gaussian")
    assert_same_step(vae, "iwae", 3, torch.rand(10, 12), kl_weight=0.25, backend="inductor", dynamic=False)
    assert_same_step(tiny_vae(guide=GUIDES[1]), "mean_field", 1, torch.rand(10, 12), backend="inductor")


def test_compiled_and_eager_draw_the_same_numbers_from_the_step_noise():
    # the generator's state is the same after either path: uniforms, then each site's noise
    vae, x = tiny_vae(), torch.rand(10, 12)
    for compile in ("off", "on"):
        step = Step(vae, make_objective("iwae", 3), dynamic_binarization=True, compile=compile, backend=None)
        drawn = step_noise(x, 5)
        step(x, None, drawn)
        after = drawn.generator.get_state()
        if compile == "on":
            assert torch.equal(after, eager_after)
        eager_after = after


def test_one_graph_per_run_a_short_final_batch_is_padded_into_the_full_batchs_graph():
    vae, x = tiny_vae(), torch.rand(10, 12)
    step = Step(vae, make_objective("elbo"), dynamic_binarization=True, compile="on", backend=None, batch_size=10)
    for epoch in range(3):
        for batch in (x, x[:7]):
            step(batch, None, step_noise(batch, epoch))
    assert step.compilations == 1 and step.compiled
    # without the run's batch size there is nothing to pad to: a graph per shape
    unpadded = Step(vae, make_objective("elbo"), dynamic_binarization=True, compile="on", backend=None)
    for batch in (x, x[:7]):
        unpadded(batch, None, step_noise(batch, 0))
    assert unpadded.compilations == 2


def objective_spec(name):
    """Every registered objective with the parameters its test here uses."""
    return next((spec, k) for spec, k in OBJECTIVES + ESTIMATORS if (spec if isinstance(spec, str) else spec["type"]) == name)


@pytest.mark.parametrize("layers", [(), [{"latent_dim": 2, "hidden": [8]}]], ids=["one layer", "two layers"])
@pytest.mark.parametrize("name", OBJECTIVE_REGISTRY.names())
def test_a_padded_short_batch_has_the_short_batchs_loss_gradients_and_noise(name, layers):
    # the padded rows are masked out of every site (poutine.mask), so the importance-weighted
    # bounds' logsumexp, the re-scored guide densities and the gradient hooks see only real rows;
    # the noise is the short batch's, drawn for its 7 rows: the generator ends where eager's does
    # (two layers: the stopped-parameter estimators' replayed guide is masked alike)
    objective, particles = objective_spec(name)
    torch.manual_seed(0)
    vae = tiny_vae({"type": "vamp", "components": 4}, guide=GUIDES[1], num_classes=4, layers=layers).double()
    random_weights(vae, 0.3)
    x, y = torch.rand(7, 12, dtype=torch.float64), torch.arange(7) % 4
    results, graphs = {}, {}
    for compile, batch_size in (("off", None), ("on", 10), ("auto", 10)):
        # auto with a run's length: its first step, traced (Pyro's eager step for a hooked objective)
        step = Step(vae, make_objective(objective, particles), dynamic_binarization=True, compile=compile, backend=None, batch_size=batch_size,
                    steps=10**9 if compile == "auto" else None, log=lambda message: None)
        drawn = step_noise(x, 3)
        loss = step(x, y, drawn, kl_weight=0.5)
        results[compile] = loss, {n: p.grad.clone() for n, p in vae.named_parameters()}, drawn.generator.get_state()
        graphs[compile] = step.path, [g.draws[0][0][-2] for g in [*step.graphs.values(), *step.traces.values()]]
    # the graph's rows: the padded batch
    assert graphs["on"] == ("compiled", [10])
    assert graphs["auto"] == (("eager", []) if name in GRADIENT_HOOKS else ("traced", [10]))
    eager, eager_grads, eager_state = results["off"]
    for padded, grads, state in results["on"], results["auto"]:
        assert torch.equal(state, eager_state)
        assert padded.item() == pytest.approx(eager.item(), rel=1e-10)
        for n, grad in grads.items():
            assert torch.allclose(grad, eager_grads[n], rtol=1e-8, atol=1e-12), n


def test_compiling_pays_where_the_steps_left_save_more_than_the_compile_costs():
    # MNIST's default 10 epochs: 6000 steps saving 2 ms each pay for a 10 s compile, not for a 14 s one
    assert compile_pays(6000, compile_seconds=10.0, saving_per_step=2e-3)
    assert not compile_pays(6000, compile_seconds=14.0, saving_per_step=2e-3)
    # a small user dataset, 900 steps: not even a warm 2.5 s compile pays
    assert not compile_pays(900, compile_seconds=2.5, saving_per_step=2e-3)
    assert not compile_pays(0, compile_seconds=0.1, saving_per_step=1.0)


def test_auto_trains_a_short_job_traced_and_says_why_in_one_line(capsys):
    # 45 training images in batches of 10: 5 steps, all of them timed, none left to save on
    torch.manual_seed(0)
    fit_tensors(tiny_vae(), (torch.rand(50, 12) < 0.5).float(), overrides=["train.batch_size=10", "train.epochs=1"], progress=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if "train.compile" in line]
    assert len(lines) == 1 and "train.compile = auto: training traced, not compiled: the 0 steps left" in lines[0], lines
    assert "less than compiling costs" in lines[0] and ("compile cache cold" in lines[0] or "compile cache warm" in lines[0])


def test_auto_compiles_a_long_job_after_timing_its_first_traced_steps():
    vae, x = tiny_vae(), torch.rand(10, 12)
    lines = []
    step = Step(vae, make_objective("elbo"), dynamic_binarization=True, compile="auto", backend=None, log=lines.append, steps=10**9)
    for i in range(TIMED_STEPS):
        assert step.path == "traced"
        step(x, None, step_noise(x, i))
        assert step.compilations == (i == TIMED_STEPS - 1)  # the gradient graph traced for the decision after the last timed step
    assert step.compiled and len(lines) == 1 and "compiling the training step" in lines[0] and "more than compiling costs" in lines[0]
    loss = step(x, None, step_noise(x, TIMED_STEPS))
    eager, _, _ = loss_and_grads(vae, "elbo", 1, "off", x, batch=TIMED_STEPS)
    assert loss.item() == pytest.approx(eager.item(), rel=1e-5) and step.compilations == 1


class BranchesOnValues(torch.nn.Module):
    """An encoder whose Python depends on its input's values: no single graph represents it."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(12, 6)

    def forward(self, x):
        h = self.net(x)
        if h.sum() > 0:
            h = -h
        return h[..., :3], h[..., 3:].exp()


@pytest.mark.parametrize("steps", [None, 10**9], ids=["compiled at once", "traced first"])
def test_an_untraceable_guide_runs_eager_under_auto_with_one_line(capsys, steps):
    vae, x = tiny_vae(encoder=BranchesOnValues()), torch.rand(10, 12)
    step = Step(vae, make_objective("elbo"), dynamic_binarization=True, compile="auto", backend=None, steps=steps)
    losses = [step(x, None, step_noise(x, i)) for i in range(TIMED_STEPS + 1)]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training eager" in err
    assert "test_step.py" in err and "if h.sum() > 0" in err  # names the line that branches
    assert step.path == "eager" and step.compilations == 0
    eager, _, _ = loss_and_grads(vae, "elbo", 1, "off", x, batch=TIMED_STEPS)
    assert torch.equal(losses[-1], eager)


def test_compile_on_makes_an_untraceable_guide_an_error():
    vae = tiny_vae(encoder=BranchesOnValues())
    with pytest.raises(UserError, match="train.compile = on but the training step cannot be compiled: .*branches on tensor values"):
        loss_and_grads(vae, "elbo", 1, "on", torch.rand(10, 12))


def no_compiler(graph, example_inputs):
    raise RuntimeError("no C++ compiler found")


def test_a_failing_compiler_falls_back_under_auto_and_is_an_error_under_on(capsys):
    vae, x = tiny_vae(), torch.rand(10, 12)
    eager, _, _ = loss_and_grads(vae, "elbo", 1, "off", x)
    loss, _, step = loss_and_grads(vae, "elbo", 1, "auto", x, backend=no_compiler)
    # the model traced: it goes on traced, from this very step
    assert step.path == "traced" and loss.item() == pytest.approx(eager.item(), rel=1e-6)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training traced, not compiled" in err and "the compiler failed" in err and "no C++ compiler found" in err
    with pytest.raises(UserError, match="cannot be compiled: the compiler failed"):
        loss_and_grads(tiny_vae(), "elbo", 1, "on", x, backend=no_compiler)


def test_train_compile_is_validated():
    with pytest.raises(UserError, match="train.compile = 'yes' is not valid; choose one of: auto, on, off"):
        config.load(None, ["train.compile=yes"])


def test_a_non_finite_loss_is_found_on_the_device_when_the_losses_are_read():
    losses = EpochLosses(5, first_step=20, epoch=2, device="cpu")
    for value in (1.0, 2.0, float("inf"), float("nan")):
        losses.add(torch.tensor(value))
    with pytest.raises(UserError, match=r"the loss became inf at step 23 \(epoch 3\)"):
        losses.total()


COMPILED = ["data.limit=250", "data.test_limit=100", "model.latent_dim=4", "model.encoder.hidden=[16]",
            "model.decoder.hidden=[16]", "model.conditional=true", "train.compile=on", "train.kl_warmup_epochs=1"]


def test_a_compiled_run_compiles_once_per_shape_resumes_exactly_and_tracks_eager(data_dir, tmp_path, capsys):
    cfg = small_config(data_dir, *COMPILED)
    straight, _ = train_run(cfg, tmp_path / "straight", progress=False)
    # 250 images in batches of 100, over two epochs: one graph, the final 50 padded to 100
    assert capsys.readouterr().err.count("compiled the training step for batches of shape (100, 784)") == 1
    train_run(small_config(data_dir, *COMPILED, "train.epochs=1"), tmp_path / "resumed", progress=False)
    resumed, _ = train_run(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert_same_weights(straight, resumed)
    eager, _ = train_run(small_config(data_dir, *COMPILED, "train.compile=off"), tmp_path / "eager", progress=False)
    for name, tensor in straight.state_dict().items():
        assert torch.allclose(tensor, eager.state_dict()[name], rtol=1e-3, atol=1e-5), name


def test_a_compiled_run_stops_at_the_first_non_finite_loss(data_dir):
    cfg = small_config(data_dir, *COMPILED)
    ds = load_dataset(cfg)
    vae = build_vae(cfg, ds.input_dim, ds.num_classes)

    def poison(state, optimizer):  # the first step of epoch 2 meets a NaN output bias
        with torch.no_grad():
            list(vae.decoder.parameters())[-1][0] = float("nan")

    with pytest.raises(UserError, match=r"the loss became nan at step 4 \(epoch 2\)"):
        fit(vae, ds, cfg, on_epoch=poison, progress=False)


def test_the_compile_cache_lives_beside_the_downloaded_mnist_unless_torchs_variable_names_another(tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    assert compile_cache.location({}) == DEFAULT_ROOT / "compile"
    # torch writes its temporary default into the variable once it has looked it up: not a choice
    assert compile_cache.location({"TORCHINDUCTOR_CACHE_DIR": default_cache_dir()}) == DEFAULT_ROOT / "compile"
    assert compile_cache.location({"TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}) == tmp_path
    env = {}
    assert compile_cache.use(env) == DEFAULT_ROOT / "compile" and env == {"TORCHINDUCTOR_CACHE_DIR": str(DEFAULT_ROOT / "compile")}


def test_the_compile_estimate_is_cold_until_the_graph_is_compiled_then_the_last_warm_compiles_seconds(tmp_path):
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    seconds, warm = compile_cache.estimate("graph", 200, "cpu", env)
    assert not warm and seconds == pytest.approx(200 * compile_cache.SECONDS_PER_NODE["cpu", False])
    compile_cache.record("graph", 200, 8.0, warm=False, device_type="cpu", env=env)  # the next compile is warm, its time not yet known
    seconds, warm = compile_cache.estimate("graph", 200, "cpu", env)
    assert warm and seconds == pytest.approx(200 * compile_cache.SECONDS_PER_NODE["cpu", True])
    compile_cache.record("graph", 200, 1.7, warm=True, device_type="cpu", env=env)
    assert compile_cache.estimate("graph", 200, "cpu", env) == (1.7, True)
    # another graph, cold: at this machine's measured 8 s / 200 nodes
    assert compile_cache.estimate("another", 300, "cpu", env) == (pytest.approx(12.0), False)
    assert compile_cache.estimate("another", 300, "cuda", env) == (pytest.approx(300 * compile_cache.SECONDS_PER_NODE["cuda", False]), False)
