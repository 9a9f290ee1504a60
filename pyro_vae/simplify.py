"""Removing the operations that hand back their input unchanged from a traced loss graph.

Pyro's distributions broadcast their parameters to the shape they already have
(``broadcast_tensors``, then ``expand``), its handlers scale log-densities by a weight of 1, and an
ELBO of one particle divides its sum by 1. Traced, each of these is still a node that the traced
step runs op by op under autograd, forwards and backwards: on the default VAE's graph 24 of its 89
nodes, with which the whole traced step took 1.06x as long on the 2-core CPU
(``benchmarks/step_paths.py --paths traced,kept,plain``, docs/benchmarks.md). A compiler would
fuse them away; a graph run without one keeps them unless they are removed here.

Only exact identities go: the node's result has its source's shape, strides and dtype and the
same values (a multiplication or division by 1, a view or expansion to the shape it already has,
an output of ``broadcast_tensors`` that already had its shape, a power of 1), so the loss and every gradient
are bit for bit those of the graph as traced. The in-place ``detach_`` of a constant copied into
the graph that nothing reads (``torch.tensor`` in traced code) goes too, with its copy.
"""

import operator

import torch

aten = torch.ops.aten

# a view of its input that has the input's shape and strides is the input
_VIEWS = {aten.expand.default, aten.view.default, aten.reshape.default, aten.alias.default}
# operations that leave their input as it is when their second argument is the scalar 1
_BY_ONE = {aten.mul.Tensor, aten.div.Tensor, aten.pow.Tensor_Scalar}


def remove_identities(module):
    """Removes the exact identities from ``module`` (a ``torch.fx.GraphModule``) in place, then the
    code left dead, and recompiles it; returns how many nodes went."""
    graph = module.graph
    before = len(graph.nodes)
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.broadcast_tensors.default:
            _unbroadcast(graph, node)
        elif node.target is aten.detach_.default:
            _drop_unread_constant(graph, node)
        elif _is_identity(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    graph.eliminate_dead_code()
    module.recompile()
    return before - len(graph.nodes)


def _is_identity(node):
    source = node.args[0] if node.args else None
    if not isinstance(source, torch.fx.Node) or not _same_layout(node, source) or _mutated(node):
        return False
    if node.target in _VIEWS:
        return True
    return node.target in _BY_ONE and len(node.args) == 2 and not node.kwargs and _is_one(node.args[1])


def _unbroadcast(graph, node):
    """Each read of a ``broadcast_tensors`` output that has its input's layout is that input; the
    node goes once nothing reads it."""
    inputs = node.args[0]
    for read in list(node.users):
        if read.target is operator.getitem and isinstance(source := inputs[read.args[1]], torch.fx.Node) \
                and _same_layout(read, source) and not _mutated(read):
            read.replace_all_uses_with(source)
            graph.erase_node(read)
    if not node.users:
        graph.erase_node(node)


def _drop_unread_constant(graph, node):
    copy = node.args[0]
    if node.users or len(copy.users) != 1 or copy.target is not aten.lift_fresh_copy.default:
        return
    graph.erase_node(node)
    graph.erase_node(copy)


def _mutated(node):
    """Whether an in-place operation writes to ``node``'s result, which would write to its source once they are one tensor."""
    return any(isinstance(user.target, torch._ops.OpOverload) and user.target._schema.is_mutable for user in node.users)


def _is_one(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 1


def _same_layout(node, source):
    a, b = node.meta.get("val"), source.meta.get("val")
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
            and a.device == b.device and a.stride() == b.stride())
