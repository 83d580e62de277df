"""A torch.fx trace of a network, as far down as its norm slots, and what can be read off the graph.

The tracer goes through every module that holds a norm slot and keeps everything else a leaf, so a
module whose forward branches on `self.training` (stochastic depth, dropout) stays a module call and keeps
its train/eval behaviour in the traced graph. Node names are a function of the module tree, so tracing the
same network again after its norms were replaced (same names, still leaves) gives the same node names:
`models/insert.py` relies on that to insert CrossNorm/SelfNorm and after-addition norms at the points
`arch/families.py` found.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

ADDS = {operator.add, operator.iadd, torch.add}
CATS = {torch.cat, torch.concat}


def is_norm_slot(module: nn.Module) -> bool:
    """A module the search can replace: BatchNorm2d, GroupNorm, or a channels-first LayerNorm (LayerNorm2d,
    as torchvision's ConvNeXt and timm name it); a channels-last nn.LayerNorm is not a 2-D norm slot."""
    if isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
        return True
    return isinstance(module, nn.LayerNorm) and type(module).__name__.endswith("2d")


def slot_channels(module: nn.Module) -> int:
    for attr in ("num_features", "num_channels"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return int(module.normalized_shape[0])  # LayerNorm2d


class SlotTracer(fx.Tracer):
    """Traces through the modules in `through` (the ancestors of the norm slots); the rest are leaves."""

    def __init__(self, through: set[str]) -> None:
        super().__init__()
        self.through = through

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname not in self.through


def ancestors_of(names: list[str]) -> set[str]:
    """Every module path that contains one of `names` (the root is "")."""
    out = {""}
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


def trace(model: nn.Module, slots: list[str]) -> fx.GraphModule:
    """A GraphModule of `model` traced down to `slots`; raises whatever fx raises when it cannot."""
    tracer = SlotTracer(ancestors_of(slots))
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def scopes(node: fx.Node) -> list[str]:
    """The module paths a node was recorded in, outermost first (a leaf call includes its own path)."""
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for key, value in stack.items():
        path = value[0] if isinstance(value, tuple) else key
        out.append(str(path))
    return out


def in_scope(node: fx.Node, path: str) -> bool:
    if not path:
        return True
    return path in scopes(node) or (node.op == "call_module" and str(node.target).startswith(path + "."))


def tensor_args(node: fx.Node) -> list[fx.Node]:
    args = node.args[0] if node.target in CATS else node.args[:2]
    return [a for a in (args if isinstance(args, list | tuple) else []) if isinstance(a, fx.Node)]


def is_join(node: fx.Node) -> str | None:
    """``add`` for a residual addition, ``cat`` for a channel concatenation, None otherwise."""
    if node.op == "call_function" and node.target in ADDS and len(tensor_args(node)) == 2:
        return "add"
    if (
        node.op == "call_method"
        and node.target in ("add", "add_", "__iadd__")
        and len(tensor_args(node)) == 2
    ):
        return "add"
    if node.op == "call_function" and node.target in CATS and len(tensor_args(node)) >= 2:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return "cat" if dim == 1 else None
    return None


@dataclass
class Graph:
    """A traced graph with ancestor sets, for finding forks, branches and scope boundaries."""

    gm: fx.GraphModule

    def __post_init__(self) -> None:
        self.nodes = list(self.gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(self.nodes)}
        self._anc: dict[fx.Node, frozenset[fx.Node]] = {}
        for n in self.nodes:  # topological order: every input is done before its users
            acc: set[fx.Node] = set()
            for a in n.all_input_nodes:
                acc.add(a)
                acc |= self._anc[a]
            self._anc[n] = frozenset(acc)

    def ancestors(self, node: fx.Node) -> frozenset[fx.Node]:
        return self._anc[node]

    def fork(self, a: fx.Node, b: fx.Node) -> fx.Node | None:
        """The latest node that both `a` and `b` descend from (or are), e.g. a residual block's input."""
        common = (self._anc[a] | {a}) & (self._anc[b] | {b})
        common = {n for n in common if n.op != "get_attr"}
        return max(common, key=self.order.__getitem__) if common else None

    def between(self, start: fx.Node, end: fx.Node) -> list[fx.Node]:
        """Nodes on some path start -> end (both excluded), in graph order."""
        anc = self._anc[end]
        return [n for n in self.nodes if n in anc and start in self._anc[n]]

    def scope_nodes(self, path: str) -> list[fx.Node]:
        return [n for n in self.nodes if n.op not in ("placeholder", "output") and in_scope(n, path)]

    def scope_io(self, path: str) -> tuple[fx.Node | None, fx.Node | None]:
        """(input, output) of a module's forward in the graph: the first outside node its nodes read,
        and the last of its nodes read from outside."""
        inside = self.scope_nodes(path)
        members = set(inside)
        inputs = [a for n in inside for a in n.all_input_nodes if a not in members and a.op != "get_attr"]
        outputs = [n for n in inside if any(u not in members for u in n.users)]
        return (inputs[0] if inputs else None), (outputs[-1] if outputs else None)


def shapes(gm: fx.GraphModule, size: int) -> dict[str, tuple[int, ...]]:
    """Each node's output shape for two meta-device images of `size` px (nothing is computed; two, so a
    BatchNorm in training mode accepts a 1×1 map)."""
    gm = gm.to("meta")
    in_ch = 3
    for m in gm.modules():
        if isinstance(m, nn.Conv2d):
            in_ch = m.in_channels
            break
    ShapeProp(gm).propagate(torch.empty(2, in_ch, size, size, device="meta"))
    out = {}
    for n in gm.graph.nodes:
        meta = n.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            out[n.name] = tuple(meta.shape)
    return out


def nearest(sizes: list[int], size: int | None) -> int:
    """The 1-based rank of the size in `sizes` (descending) nearest to `size`; 0 when unknown."""
    if size is None or not sizes:
        return 0
    return min(range(len(sizes)), key=lambda i: abs(sizes[i] - size)) + 1


def depthwise(model: nn.Module, node: fx.Node | None) -> bool:
    """Whether the norm at `node` reads a depthwise conv (groups = in = out channels)."""
    if node is None or not node.args or not isinstance(node.args[0], fx.Node):
        return False
    prev = node.args[0]
    if prev.op != "call_module":
        return False
    conv = model.get_submodule(str(prev.target))
    return (
        isinstance(conv, nn.Conv2d)
        and conv.groups > 1
        and conv.groups == conv.in_channels == conv.out_channels
    )
