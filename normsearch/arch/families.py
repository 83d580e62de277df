"""Read a network's Structure: family adapters for torchvision's (and timm's) families, a torch.fx trace
for anything else, a flat list of slots when even that fails.

- Units come from the family's unit classes (torchvision's BasicBlock/Bottleneck, _DenseLayer, the
  InvertedResidual of MobileNetV2/V3 and ShuffleNetV2, MNASNet's _InvertedResidual, EfficientNet's
  MBConv/FusedMBConv, RegNet's ResBottleneckBlock; timm's ResNet blocks share the ResNet names). A network
  with none of them gets its units from the trace: every residual addition (or channel concatenation of
  branches) with norms between its fork and itself is a unit, named by the module whose forward does it.
  A network with no units at all (VGG-BN, AllConvNet) is plain: each conv-norm stage is a unit.
- Stages are resolution levels: a unit's stage ranks the spatial size at its last norm among all units'
  (one meta-device shape pass at 299 px, Inception v3's size; nothing computed); norms before the first
  unit are the stem, after the last the head, between units a transition (DenseNet's).
- Positions: the unit's main-path norms in order are first / middle / last (one norm: only); norms on the
  shortcut (`downsample`, `proj`, ShuffleNetV2's `branch1`, or the trace's other branch) are shortcut.
- Insertion points: ``pre`` (the unit's input), ``residual`` (the main branch's end, before the addition
  or concatenation), ``identity`` (the shortcut before the addition), ``post`` (after the addition, before
  a ResNet block's last ReLU). A dense layer has pre and residual (its new features); a plain stage
  residual (after its norm) and post (after its activation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx, nn

from normsearch.arch.structure import UNIT_POSITIONS, Released, SlotInfo, Structure, UnitInfo
from normsearch.arch.trace import (
    Graph,
    depthwise,
    is_join,
    is_norm_slot,
    nearest,
    scopes,
    shapes,
    slot_channels,
    trace,
)

UNIT_CLASSES: dict[tuple[str, str], str] = {
    ("resnet", "BasicBlock"): "resnet",
    ("resnet", "Bottleneck"): "resnet",
    ("resnet", "Block"): "resnet",  # normsearch.models.resnet
    ("densenet", "_DenseLayer"): "densenet",
    ("mobilenetv2", "InvertedResidual"): "mobilenetv2",
    ("mobilenetv3", "InvertedResidual"): "mobilenetv3",
    ("shufflenetv2", "InvertedResidual"): "shufflenetv2",
    ("mnasnet", "_InvertedResidual"): "mnasnet",
    ("efficientnet", "MBConv"): "efficientnet",
    ("efficientnet", "FusedMBConv"): "efficientnet",
    ("regnet", "ResBottleneckBlock"): "regnet",
}
SHORTCUTS = ("downsample", "proj", "shortcut", "branch1")
MOBILE = Released(xbn_groups=16, xbn_stem=False)
RELEASED: dict[str, Released] = {
    "densenet": Released(ibn_ratio=0.4, ibn_order="bn_in", ibn_every=3),  # densenet_ibn.py
    "mobilenetv2": MOBILE,  # mobilenetV2_XBNBlock.py: GN(16) on the depthwise norms, BN stem
    "shufflenetv2": Released(xbn_groups=29, xbn_stem=False),  # shuffleV2_XBNBlock.py with GN(29)
    "mobilenetv3": MOBILE,
    "mnasnet": MOBILE,
    "efficientnet": MOBILE,
}
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish)


@dataclass(frozen=True)
class Anchor:
    """Where in the traced graph a module goes: after `node` (``after``: every user reads the new output;
    ``within``: only users inside module `scope`), or on argument `index` of `node` (``arg``)."""

    node: str
    mode: str
    index: int = 0
    scope: str = ""


@dataclass
class Analysis:
    """A Structure plus, for a traced network, the graph anchors of every insertion point."""

    structure: Structure
    anchors: dict[str, Anchor] = field(default_factory=dict)  # insert/post module name -> anchor
    traced: list[str] = field(default_factory=list)  # the modules the trace went down to


def family_of(module: nn.Module) -> str | None:
    key = (type(module).__module__.rsplit(".", 1)[-1], type(module).__name__)
    return UNIT_CLASSES.get(key)


def _flat(model: nn.Module, slots: dict[str, nn.Module], family: str, note: str) -> Analysis:
    infos = {n: SlotInfo(n, slot_channels(m), type(m).__name__) for n, m in slots.items()}
    return Analysis(Structure(family, infos, traced=False, note=note))


def analyze(model: nn.Module, size: int = 299, with_shapes: bool = True) -> Analysis:
    """The Structure of `model` and its insertion anchors. Never raises for a network it cannot trace:
    the Structure then lists the slots only (``traced=False``, `note` says why)."""
    slots = {n: m for n, m in model.named_modules() if n and is_norm_slot(m)}
    fam_units = {n: family_of(m) for n, m in model.named_modules() if family_of(m)}
    family = next(iter(fam_units.values()), None)
    through = list(slots) + list(fam_units)
    try:
        gm = trace(model, through)
    except Exception as error:  # fx raises many types for data-dependent control flow
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return _flat(model, slots, family or "untraceable", f"torch.fx could not trace it: {first[:160]}")
    graph = Graph(gm)
    slot_nodes = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in slots and node.target not in slot_nodes:
            slot_nodes[str(node.target)] = node
    order = [n for n in slots if n in slot_nodes] + [n for n in slots if n not in slot_nodes]
    shape = {}
    if with_shapes:
        try:
            shape = shapes(gm, size)
        except Exception as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            return _flat(model, slots, family or "untraceable", f"shape pass failed: {first[:160]}")
    builder = _Builder(model, graph, slots, slot_nodes, order, shape, through)
    if fam_units:
        builder.family_units(fam_units)
    else:
        builder.traced_units()
        family = "traced" if builder.units else "plain"
        if not builder.units:
            builder.plain_units()
    return builder.finish(family or "traced", RELEASED.get(family or "", Released()))


class _Builder:
    """Collects units and anchors from one traced graph, then numbers stages and positions."""

    def __init__(
        self,
        model: nn.Module,
        graph: Graph,
        slots: dict[str, nn.Module],
        slot_nodes: dict[str, fx.Node],
        order: list[str],
        shape: dict[str, tuple[int, ...]],
        through: list[str],
    ) -> None:
        self.model, self.g, self.slots, self.slot_nodes = model, graph, slots, slot_nodes
        self.order, self.shape, self.through = order, shape, through
        # each unit: name, kind, main and shortcut norms, anchors {position: (Anchor, node)}, module
        self.units: list[dict] = []
        self.anchors: dict[str, Anchor] = {}
        self.stage_scopes: dict[str, str] = {}  # unit -> the stage module whose output a stage post follows

    def _ch(self, node: fx.Node | None) -> int:
        s = self.shape.get(node.name) if node is not None else None
        return int(s[1]) if s and len(s) >= 2 else 0

    def _norms_in(self, path: str) -> list[str]:
        return [n for n in self.order if n == path or n.startswith(path + ".")]

    def family_units(self, fam_units: dict[str, str]) -> None:
        for path, fam in fam_units.items():
            if any(path.startswith(other + ".") for other in fam_units):
                continue  # a unit inside a unit belongs to the outer one
            norms = self._norms_in(path)
            short = [n for n in norms if any(n.startswith(f"{path}.{s}.") for s in SHORTCUTS)]
            main = [n for n in norms if n not in short]
            inp, out = self.g.scope_io(path)
            joins = [n for n in self.g.scope_nodes(path) if is_join(n)]
            anchors: dict[str, tuple[Anchor, fx.Node | None]] = {}
            if inp is not None:
                anchors["pre"] = (Anchor(inp.name, "within", scope=path), inp)
            if fam == "densenet":
                first = self.slot_nodes.get(main[0]) if main else None
                if first is not None and first.args and isinstance(first.args[0], fx.Node):
                    anchors["pre"] = (Anchor(first.name, "arg", 0), first.args[0])
                if out is not None:
                    anchors["residual"] = (Anchor(out.name, "after"), out)
                parent = path.rpartition(".")[0]
                self.stage_scopes[path] = parent
                kind = "dense"
            elif joins and is_join(joins[-1]) == "add":
                kind = "residual"
                self._join_anchors(joins[-1], main, anchors)
            elif joins and is_join(joins[-1]) == "cat":
                kind = "split"
                self._join_anchors(joins[-1], main, anchors)
                if out is not None:
                    anchors["post"] = (Anchor(out.name, "after"), out)
            else:
                kind = "block"
                if out is not None:
                    anchors["residual"] = anchors["post"] = (Anchor(out.name, "after"), out)
            self.units.append(
                dict(name=path, kind=kind, main=main, short=short, anchors=anchors, module=True)
            )

    def _join_anchors(self, join: fx.Node, main: list[str], anchors: dict) -> None:
        args = [
            a for a in (join.args[0] if is_join(join) == "cat" else join.args[:2]) if isinstance(a, fx.Node)
        ]
        main_nodes = {self.slot_nodes[n] for n in main if n in self.slot_nodes}

        def norms_behind(a: fx.Node) -> int:
            return len(main_nodes & (self.g.ancestors(a) | {a}))

        res = max(range(len(args)), key=lambda i: norms_behind(args[i]))
        anchors["residual"] = (Anchor(join.name, "arg", res), args[res])
        if is_join(join) == "add":
            anchors["identity"] = (Anchor(join.name, "arg", 1 - res), args[1 - res])
            anchors["post"] = (Anchor(join.name, "after"), join)

    def traced_units(self) -> None:
        """Units from the graph: each addition or concatenation of branches that has norms between its
        fork and itself, named by the module whose forward makes it."""
        claimed: set[str] = set()
        for node in self.g.nodes:
            kind = is_join(node)
            if kind is None:
                continue
            args = [a for a in (node.args[0] if kind == "cat" else node.args[:2]) if isinstance(a, fx.Node)]
            fork = args[0]
            for a in args[1:]:
                fork = self.g.fork(fork, a) if fork is not None else None
            if fork is None:
                continue
            stack = [s for s in scopes(node) if s]
            taken = {u["name"] for u in self.units}
            is_module = bool(stack) and stack[-1] not in taken
            name = stack[-1] if is_module else node.name
            inside = set(self.g.between(fork, node))
            norms = [
                n
                for n in self.order
                if n not in claimed
                and (self.slot_nodes.get(n) in inside or (is_module and n.startswith(name + ".")))
            ]
            if not norms:
                continue
            # A norm only the non-residual branches read is a shortcut norm; one before the fork inside
            # the unit's module (a pre-activation block's first norm) is on the main path.
            reach = [self.g.ancestors(a) | {a} for a in args]
            counts = [sum(1 for n in norms if self.slot_nodes.get(n) in r) for r in reach]
            res = max(range(len(args)), key=counts.__getitem__)
            short = [
                n
                for n in norms
                if kind == "add"
                and self.slot_nodes.get(n) not in reach[res]
                and self.slot_nodes.get(n) in inside
            ]
            main = [n for n in norms if n not in short]
            unit_input = self.g.scope_io(name)[0] if is_module else None
            if is_module and unit_input is not None:
                pre = Anchor(unit_input.name, "within", scope=name)
                fork = unit_input
            else:  # no module of its own: only the nodes between the fork and the join read the new input
                pre = Anchor(fork.name, "between", scope=node.name)
            anchors: dict[str, tuple[Anchor, fx.Node | None]] = {"pre": (pre, fork)}
            self._join_anchors(node, main, anchors)
            if kind == "cat":
                anchors["post"] = (Anchor(node.name, "after"), node)
            claimed.update(norms)
            self.units.append(
                dict(
                    name=name,
                    kind="residual" if kind == "add" else "split",
                    main=main,
                    short=short,
                    anchors=anchors,
                    module=is_module,
                )
            )

    def plain_units(self) -> None:
        for name in self.order:
            node = self.slot_nodes.get(name)
            if node is None:
                continue
            anchors: dict[str, tuple[Anchor, fx.Node | None]] = {
                "residual": (Anchor(node.name, "after"), node)
            }
            users = list(node.users)
            post = node
            one = users[0] if len(users) == 1 else None
            if one is not None and one.op == "call_module":
                post = one if isinstance(self.model.get_submodule(str(one.target)), ACTIVATIONS) else node
            anchors["post"] = (Anchor(post.name, "after"), post)
            self.units.append(
                dict(name=name, kind="plain", main=[name], short=[], anchors=anchors, module=False)
            )

    def finish(self, family: str, released: Released) -> Analysis:
        def level(unit: dict) -> int:
            node = self.slot_nodes.get(unit["main"][-1]) if unit["main"] else None
            s = self.shape.get(node.args[0].name) if node is not None and node.args else None
            return int(s[-1]) if s and len(s) == 4 else 0

        self.units = [u for u in self.units if u["main"] or u["short"]]
        self.units.sort(key=lambda u: min(self.order.index(n) for n in u["main"] + u["short"]))
        sizes = sorted({level(u) for u in self.units}, reverse=True)
        stage_of = {u["name"]: sizes.index(level(u)) + 1 for u in self.units}
        infos: dict[str, SlotInfo] = {}
        units: list[UnitInfo] = []
        in_unit = {n: u for u in self.units for n in u["main"] + u["short"]}
        counts: dict[int, int] = {}
        for number, u in enumerate(self.units, start=1):
            stage = stage_of[u["name"]]
            index = counts.get(stage, 0)
            counts[stage] = index + 1
            positions = {p: self._ch(node) for p, (anchor, node) in u["anchors"].items()}
            for p, (anchor, _) in u["anchors"].items():
                self.anchors[_child(u, p)] = anchor
            out_ch = positions.get("post") or positions.get("residual") or 0
            units.append(
                UnitInfo(
                    u["name"],
                    u["kind"],
                    stage,
                    index,
                    number,
                    positions.get("pre", 0),
                    out_ch,
                    tuple(u["main"]),
                    tuple(u["short"]),
                    positions,
                    u["module"],
                )
            )
        first = min((self.order.index(n) for n in in_unit), default=len(self.order))
        last = max((self.order.index(n) for n in in_unit), default=-1)
        for i, name in enumerate(self.order):
            node = self.slot_nodes.get(name)
            s = self.shape.get(node.args[0].name) if node is not None and node.args else None
            size = int(s[-1]) if s and len(s) == 4 else None
            dw = depthwise(self.model, node)
            if name in in_unit:
                u = in_unit[name]
                if name in u["short"]:
                    pos = "shortcut"
                else:
                    k, n = u["main"].index(name), len(u["main"])
                    pos = (
                        UNIT_POSITIONS[3]
                        if n == 1
                        else "first"
                        if k == 0
                        else "last"
                        if k == n - 1
                        else "middle"
                    )
                infos[name] = SlotInfo(
                    name,
                    slot_channels(self.slots[name]),
                    type(self.slots[name]).__name__,
                    stage_of[u["name"]],
                    u["name"],
                    pos,
                    dw,
                )
                continue
            stage = 0 if i < first else nearest(sizes, size)
            pos = "stem" if i < first else "head" if i > last else "transition"
            infos[name] = SlotInfo(
                name, slot_channels(self.slots[name]), type(self.slots[name]).__name__, stage, None, pos, dw
            )
        posts = self._stage_posts(units, len(sizes))
        structure = Structure(family, infos, tuple(units), len(sizes), posts, released)
        return Analysis(structure, self.anchors, self.through)

    def _stage_posts(self, units: list[UnitInfo], num_stages: int) -> dict[int, tuple[str, int]]:
        """Where each stage's output norm (IBN-b) goes: after a dense block's scope, else after the stage's
        last unit; records the scopes' anchors."""
        posts: dict[int, tuple[str, int]] = {}
        for scope in dict.fromkeys(self.stage_scopes.values()):  # a dense block's output, whatever its stage
            _, out = self.g.scope_io(scope)
            if out is not None:
                self.anchors[f"{scope}.post"] = Anchor(out.name, "after")
        for stage in range(1, num_stages + 1):
            members = [u for u in units if u.stage == stage]
            if not members:
                continue
            lastu = members[-1]
            scope = self.stage_scopes.get(lastu.name)
            if scope and f"{scope}.post" in self.anchors:
                _, out = self.g.scope_io(scope)
                posts[stage] = (f"{scope}.post", self._ch(out))
            elif "post" in lastu.positions:
                posts[stage] = (lastu.child("post"), lastu.positions["post"])
        return posts


def _child(unit: dict, position: str) -> str:
    """The key an insertion point is stored under: the unit's name and position."""
    return f"{unit['name']}|{position}"
