"""Removing the identities from a traced loss graph: exactly the nodes that hand back their input
go, the loss and gradients stay bit for bit those of the graph as traced, and a node whose result
is written in place stays."""

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_vae import noise
from pyro_vae.simplify import remove_identities
from pyro_vae.step import Step
from pyro_vae.objectives import make_objective

from test_step import tiny_vae

aten = torch.ops.aten


def trace(fn, *inputs):
    return make_fx(fn, tracing_mode="fake", pre_dispatch=True)(*inputs)


def targets(module):
    return [node.target for node in module.graph.nodes if node.op == "call_function"]


def with_identities(loc, log_scale, x):
    """A Normal log-density the way Pyro's distributions build it, broadcasting to the shapes
    the tensors already have and scaling by 1, besides operations that are no identities."""
    loc, scale = torch.broadcast_tensors(loc, log_scale.exp())
    loc, scale = loc.expand(x.shape), scale.expand(x.shape)
    density = -((x - loc) / scale) ** 2 / 2 - scale.log()
    kept = density.reshape(len(x), 2, -1).sum(-1) * 2.0  # a real reshape, a real scaling
    wide = loc.expand(3, *x.shape).sum(0)  # a real expansion
    return (density.reshape(x.shape) * 1.0).sum() / 1 + kept.sum() + wide.pow(1).sum() * torch.tensor(0.5)


def test_the_identities_go_and_the_loss_and_gradients_stay_bit_for_bit():
    torch.manual_seed(0)
    inputs = [torch.randn(5, 4, requires_grad=True), torch.randn(4, requires_grad=True), torch.randn(5, 4)]
    traced, simplified = trace(with_identities, *inputs), trace(with_identities, *inputs)
    removed = remove_identities(simplified)
    # loc is read as it was; the scale, broadcast from (4,) to (5, 4), is read from the broadcast
    (broadcast,) = [node for node in simplified.graph.nodes if node.target is aten.broadcast_tensors.default]
    assert [read.args[1] for read in broadcast.users] == [1]
    assert removed == 7  # a read of the broadcast, 2 expands, a reshape, * 1.0, / 1, pow 1
    # what is no identity stays: the reshape to (5, 2, 2), * 2.0, the expansion to (3, 5, 4)
    assert targets(simplified).count(aten.reshape.default) == 1
    assert targets(simplified).count(aten.expand.default) == 1
    assert sum(node.target is aten.mul.Tensor and node.args[1] == 2.0 for node in simplified.graph.nodes) == 1
    results = []
    for module in (traced, simplified):
        loss = module(*inputs)
        results.append((loss, torch.autograd.grad(loss, inputs[:2])))
        assert loss.dtype == torch.float32
    (loss, grads), (loss_simplified, grads_simplified) = results
    assert torch.equal(loss, loss_simplified)
    for g, g_simplified in zip(grads, grads_simplified):
        assert torch.equal(g, g_simplified)


def written_in_place(x):
    y = x * 1.0
    y.add_(1.0)
    return y


def test_a_node_whose_result_is_written_in_place_stays():
    x = torch.zeros(3)
    module = trace(written_in_place, x)
    remove_identities(module)
    assert module(x).tolist() == [1.0, 1.0, 1.0]
    assert x.tolist() == [0.0, 0.0, 0.0]  # the input is not the one written


@pytest.mark.parametrize("objective, particles", [("mean_field", 1), ("iwae", 3)])
def test_the_traced_step_runs_the_vaes_loss_without_its_identities(objective, particles):
    """The VAE's traced loss, as the traced step runs it: no scaling by 1, no broadcast but the
    particles' (the data broadcast against 3 particles' decoder outputs), nothing left to remove."""
    torch.manual_seed(0)
    vae = tiny_vae()
    step = Step(vae, make_objective(objective, particles), dynamic_binarization=True, compile="auto", steps=10, log=lambda m: None)
    x = torch.rand(6, 12)
    step(x, None, noise.StepNoise(0, 0, len(x), slice(None), x.device))
    (traced,) = step.traces.values()
    nodes = [node for node in traced.fn.graph.nodes if node.op == "call_function"]
    assert not [n for n in nodes if n.target in (aten.mul.Tensor, aten.div.Tensor) and n.args[1] == 1]
    assert not [n for n in nodes if n.target is aten.detach_.default]
    broadcast = [(read.meta["val"].shape, n.args[0][read.args[1]].meta["val"].shape)
                 for n in nodes if n.target is aten.broadcast_tensors.default for read in n.users]
    assert broadcast == ([] if particles == 1 else [((3, 6, 12), (6, 12))])
    assert remove_identities(traced.fn) == 0
