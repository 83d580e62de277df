"""Insert modules (CrossNorm/SelfNorm, after-addition norms) into any traced network by rewriting its graph.

`insert_modules(model, analysis, modules)` traces `model` the way `arch.families.analyze` did (same modules
traced through, so the same node names), adds each module under its dotted name and calls it at its
anchor: after a node (every reader, or only readers inside the unit), or on one argument of an addition
or concatenation. The result is a `torch.fx.GraphModule` whose state_dict keys are the original module
names plus the inserted ones, so a rebuild from the same ArchConfig loads its weights strictly.
"""

from __future__ import annotations

from torch import fx, nn

from normsearch.arch.families import Analysis, Anchor
from normsearch.arch.trace import in_scope, is_join, trace
from normsearch.errors import NormsearchError


def _insert(
    gm: fx.GraphModule, nodes: dict[str, fx.Node], target: str, anchor: Anchor, tails: dict[Anchor, fx.Node]
) -> None:
    graph = gm.graph
    node = nodes.get(anchor.node)
    if node is None:
        raise NormsearchError(f"cannot insert {target}: node {anchor.node!r} is not in this network's graph")
    if anchor.mode == "arg":
        args = list(node.args[0]) if is_join(node) == "cat" else list(node.args[:2])
        with graph.inserting_before(node):
            new = graph.call_module(target, (args[anchor.index],))
        args[anchor.index] = new
        if is_join(node) == "cat":
            node.update_arg(0, args)
        else:
            node.update_arg(anchor.index, new)
        return
    node = tails.get(anchor, node)  # a second module at one point goes after the first (CrossNorm first)
    with graph.inserting_after(node):
        new = graph.call_module(target, (node,))
    tails[anchor] = new
    if anchor.mode == "after":
        node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    elif anchor.mode == "within":
        node.replace_all_uses_with(
            new, delete_user_cb=lambda user: user is not new and in_scope(user, anchor.scope)
        )
    else:  # "between": only nodes on a path to the join read the new input
        join = nodes[anchor.scope]
        inside = {n for n in graph.nodes if n is join or _reaches(n, join)}
        node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new and user in inside)


def _reaches(node: fx.Node, target: fx.Node) -> bool:
    stack, seen = list(node.users), set()
    while stack:
        n = stack.pop()
        if n is target:
            return True
        if n not in seen:
            seen.add(n)
            stack.extend(n.users)
    return False


def insert_modules(
    model: nn.Module, analysis: Analysis, modules: dict[str, tuple[nn.Module, str]]
) -> nn.Module:
    """`model` as a GraphModule with each `modules[name] = (module, anchor key)` called at its anchor."""
    if not analysis.structure.traced:
        raise NormsearchError(
            f"cannot insert {', '.join(modules)}: {analysis.structure.note}; per-slot norms still work"
        )
    gm = trace(model, analysis.traced)
    nodes = {n.name: n for n in gm.graph.nodes}
    tails: dict[Anchor, fx.Node] = {}
    for name, (module, key) in modules.items():
        anchor = analysis.anchors.get(key)
        if anchor is None:
            raise NormsearchError(f"cannot insert {name}: no insertion point {key!r} in this network")
        gm.add_submodule(name, module)
        _insert(gm, nodes, name, anchor, tails)
    gm.graph.lint()
    gm.recompile()
    return gm
