"""Tracing and discovery: the torch.fx trace, the recording interpreter and `discover()`.

The model is traced with every rule-covered module kept as a leaf, run once on the example
input while each node's rule reports to the builder, run again along the training graph when
it calls more (auxiliary heads), and the builder's spaces are finally named as groups in a
`ChannelGraph`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import WidthSearchError
from .builder import _Builder
from .records import (
    Binding,
    ChannelGraph,
    GroupInfo,
    LayerRecord,
    Layout,
    MacRecord,
    OpRecord,
    ParamBinding,
    TensorInfo,
)
from .rules import (
    _SPLIT_AWARE,
    DEFERRED_FAMILIES,
    FALLBACK_LEAVES,
    RULES,
    RuleContext,
    RuleTable,
    Traced,
    _Dim,
    _flatten,
    _limited,
    _unknown,
    container_rule,
)


class _Tracer(fx.Tracer):
    """Keeps every module that has a rule as one node, so rules see whole modules."""

    def __init__(self, rules: RuleTable, leaves: tuple[type, ...] = ()) -> None:
        super().__init__()
        self.rules = rules
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.rules.module_rule(m) is not None or type(m) in self.leaves:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, rules: RuleTable | None = None, *, training: bool = False
          ) -> fx.GraphModule:
    """torch.fx trace of `model` with every rule-covered module kept as a leaf.

    The inference path by default; `training=True` traces the training path (auxiliary
    heads such as Inception's run only there).
    """
    tracer = _Tracer(rules or RULES)
    was_training = model.training
    model.train(training)
    try:
        graph = tracer.trace(model)
    except Exception as err:
        leaves = tuple(cls for declared in FALLBACK_LEAVES for cls in declared())
        if leaves:
            try:
                tracer = _Tracer(rules or RULES, leaves)
                graph = tracer.trace(model)
                return fx.GraphModule(tracer.root, graph)
            except Exception:  # noqa: S110 - the first error names the construct
                pass
            finally:
                model.train(was_training)
        raise WidthSearchError(
            f"torch.fx cannot trace {type(model).__name__}: {err}. widthsearch needs a "
            "forward without data-dependent Python control flow."
        ) from err
    finally:
        model.train(was_training)
    return fx.GraphModule(tracer.root, graph)


class _Recorder(fx.Interpreter):
    """Runs the traced graph once and hands every node's value to the builder's rules.

    With a FlopCounterMode active, the MACs of every op that is not a conv / linear layer
    (attention, matmul, einsum) are measured; such an op keeps its channels at full width,
    so its MACs are a constant the cost model adds.
    """

    def __init__(self, gm: fx.GraphModule, builder: _Builder, counter: Any = None) -> None:
        super().__init__(gm)
        self.builder = builder
        self.counter = counter

    def run_node(self, n: fx.Node) -> Any:
        b = self.builder
        before = self.counter.get_total_flops() if self.counter is not None else 0
        result = super().run_node(n)
        flops = self.counter.get_total_flops() - before if self.counter is not None else 0
        layers = len(b.layers)
        b.values[n] = _apply_rule(b, n, result)
        if flops and len(b.layers) == layers:  # MACs no layer record models
            name = str(n.target) if n.op == "call_module" else n.name
            linear_in = b.width_macs.get(name)
            b.fixed_macs.append((name, flops / 2, linear_in))
            if linear_in is not None:  # the rule said how the MACs follow the width
                return result
            tensors = _flatten([b.resolve(n.args), b.resolve(n.kwargs), b.values[n]])
            for t in tensors:
                if isinstance(t, Traced):
                    b.fix(t.layout, f"{name}: an op whose MACs widthsearch measures, not models")
        return result


def _paired(traced: Any, value: Any) -> list[tuple[Traced, torch.Tensor]]:
    """(Traced, tensor) pairs of a node's described result and its real value."""
    if isinstance(traced, Traced) and isinstance(value, torch.Tensor):
        return [(traced, value)]
    if isinstance(traced, (list, tuple)) and isinstance(value, (list, tuple)):
        return [p for t, v in zip(traced, value, strict=False) for p in _paired(t, v)]
    return []


def _describe(value: Any, layout: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return Traced(tuple(value.shape), layout if isinstance(layout, Layout) else None)
    if isinstance(value, torch.Size):
        layouts = layout if isinstance(layout, (list, tuple)) else [None] * len(value)
        return tuple(_Dim(v, lay) if isinstance(lay, Layout) else v
                     for v, lay in zip(value, layouts, strict=False))
    if isinstance(value, (list, tuple)):
        layouts = layout if isinstance(layout, (list, tuple)) else [None] * len(value)
        items = [_describe(v, lay) for v, lay in zip(value, layouts, strict=False)]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(layout, Layout):
        return _Dim(value, layout)
    return value


def _apply_rule(b: _Builder, node: fx.Node, result: Any) -> Any:
    if node.op == "placeholder":
        if isinstance(result, torch.Tensor) and result.dim() >= 2:
            sid = b.new_space(result.shape[1], "input", fixed="the model input")
            traced = Traced(tuple(result.shape), Layout(1, (sid,)))
        else:
            traced = _describe(result, None)
        b.note_buffers([], _paired(traced, result))
        return traced
    if node.op == "get_attr":
        if isinstance(result, torch.Tensor):
            return Traced(tuple(result.shape), None, constant=str(node.target))
        return result
    if node.op == "output":
        returned = [t for t in _flatten(b.resolve(node.args)) if isinstance(t, Traced)]
        for t in returned:
            b.fix(t.layout, "the model output")
        if b.output_buffers is None:  # the inference graph's (recorded first)
            b.output_buffers = tuple(b.buffer_of[id(t)] for t in returned if id(t) in b.buffer_of)
        return None

    module = b.gm.get_submodule(node.target) if node.op == "call_module" else None
    ctx = RuleContext(b, node, module, result)
    if module is not None:
        rule = b.rules.module_rule(module)
        what = type(module).__name__
    elif node.op == "call_method":
        rule = b.rules.methods.get(node.target)
        what = f"Tensor.{node.target}"
    else:
        rule = b.rules.functions.get(node.target)
        what = getattr(node.target, "__name__", str(node.target))
        if rule is None and isinstance(node.target, type) and issubclass(node.target, tuple):
            rule = container_rule  # a namedtuple of outputs (InceptionOutputs)

    inputs = ctx.tensor_inputs()
    split = [t for t in inputs if t.layout is not None and t.layout.by is not None]
    if rule is None:
        if not inputs and not isinstance(result, torch.Tensor):
            return _describe(result, None)  # shape arithmetic etc.
        layout = _unknown(ctx, inputs, what)
    elif split and rule not in _SPLIT_AWARE:
        why = "channels split in two (heads or shuffle parts) used by more than a reshape"
        layout = _limited(ctx, inputs, why)
    else:
        layout = rule(ctx)
    traced = _describe(result, layout)
    traced = _constant_view(b, node, inputs, traced)
    outputs = [t for t in _flatten(traced) if isinstance(t, Traced)]
    b.note_buffers(inputs, _paired(traced, result))
    if outputs and (inputs or module is not None):
        tensors = inputs + outputs
        b.ops.append((ctx.name, tensors, tuple(b.buffer_of.get(id(t)) for t in tensors)))
    return traced


_VIEWS = ("reshape", "view", "unsqueeze", "squeeze", torch.reshape, torch.unsqueeze,
          torch.squeeze)


def _constant_view(b: _Builder, node: fx.Node, inputs: list[Traced], traced: Any) -> Any:
    """A parameter reshaped by size-1 axes only (`gamma.reshape(1, -1, 1, 1)`) is still
    that parameter, so a rule can bind it; the view node is remembered as transparent."""
    if (not isinstance(traced, Traced) or traced.layout is not None or len(inputs) != 1
            or inputs[0].constant is None or node.target not in _VIEWS):
        return traced
    if [s for s in inputs[0].shape if s != 1] != [s for s in traced.shape if s != 1]:
        return traced
    sizes = [a for a in _flatten([list(node.args[1:]), list(node.kwargs.values())])
             if isinstance(a, int) and not isinstance(a, bool)]
    if node.target in ("view", "reshape", torch.reshape) and any(a > 1 for a in sizes):
        return traced  # sized by a number written in the model: it cannot follow a width
    b.constant_views.add(node)
    return Traced(traced.shape, None, constant=inputs[0].constant)


def discover(
    model: nn.Module, example_input: torch.Tensor | tuple, rules: RuleTable | None = None
) -> ChannelGraph:
    """Trace `model` on `example_input` and find its channel groups.

    Constructs without a rule fix the channels they touch and are named in one warning.
    The inference graph gives the costs; when the training graph calls more (auxiliary
    heads), it is recorded too, so the modules only training runs are sliced as well.
    """
    from torch.utils.flop_counter import FlopCounterMode

    for install in DEFERRED_FAMILIES:  # timm's layers, once timm is loaded
        install(RULES)
    gm = trace(model, rules)
    builder = _Builder(gm, rules or RULES)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counted_attention(), FlopCounterMode(display=False) as counter:
            _Recorder(gm, builder, counter).run(*args)
    except WidthSearchError:
        raise
    except Exception as err:
        shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))
        raise WidthSearchError(
            f"the example input of shape {shapes} does not run through "
            f"{type(model).__name__}: {err}"
        ) from err
    finally:
        model.train(was_training)
    train_gm = _training_graph(model, rules, gm)
    if train_gm is not None:
        _record_training_graph(builder, train_gm, args, model)
    return _finish(builder, model)


@contextlib.contextmanager
def counted_attention() -> Iterator[None]:
    """Run nn.MultiheadAttention on its unfused path, whose MACs FlopCounterMode sees (its
    fused inference kernel is invisible to it), so measured MACs include attention."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def _training_graph(model: nn.Module, rules: RuleTable | None, eval_gm: fx.GraphModule
                    ) -> fx.GraphModule | None:
    """The training-mode graph if it differs from the inference one (auxiliary heads)."""
    try:
        gm = trace(model, rules, training=True)
    except WidthSearchError:
        return None

    def signature(g: fx.GraphModule) -> list[tuple[str, str]]:
        return [(n.op, str(n.target)) for n in g.graph.nodes]

    return None if signature(gm) == signature(eval_gm) else gm


def _record_training_graph(b: _Builder, gm: fx.GraphModule, args: tuple, model: nn.Module
                           ) -> None:
    """Couple channels along the training-only path too; costs stay the inference ones."""
    kept = len(b.layers), len(b.ops), len(b.fixed_macs)
    eval_gm, b.gm = b.gm, gm
    was_training = model.training
    model.eval()  # the training graph's control flow, the modules' inference arithmetic
    try:
        with torch.no_grad():
            _Recorder(gm, b).run(*args)
    except WidthSearchError:
        raise
    except Exception as err:
        msg = (f"the training-mode graph of {type(model).__name__} (auxiliary heads) does not "
               f"run at this example input ({err}); the modules only training uses are not "
               "sliced, so train the supernet in eval-mode graphs or use a larger input")
        b.messages.append(msg)
        warnings.warn(msg, stacklevel=4)
    finally:
        model.train(was_training)
        b.gm = eval_gm
        del b.layers[kept[0]:], b.ops[kept[1]:], b.fixed_macs[kept[2]:]


def _through_views(b: _Builder, node: fx.Node) -> set[fx.Node]:
    """The users of `node`, looking through the constant views of it."""
    out: set[fx.Node] = set()
    for u in node.users:
        out |= _through_views(b, u) if u in b.constant_views else {u}
    return out


def _finish(b: _Builder, model: nn.Module) -> ChannelGraph:
    for pname, uses in b.parameter_uses.items():  # slice a parameter only if every use can
        users = {u for node in b.values if node.op == "get_attr" and node.target == pname
                 for u in _through_views(b, node)}
        if not users <= uses:
            axis, layout = b.parameters.pop(pname)
            b.fix(layout, f"the parameter {pname!r} is also used where it cannot be sliced")
    roots = sorted({b.find(s) for s in range(len(b.parent))} - set(b.refined))
    names: dict[int, str] = {}
    taken: set[str] = set()
    for r in roots:
        base = next((p for p in b.producers.get(r, []) if p), f"group{r}")
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}#{k}"
        taken.add(name)
        names[r] = name
    groups = [
        GroupInfo(
            name=names[r],
            size=b.size[r],
            producers=tuple(p for p in b.producers.get(r, []) if p != "input"),
            consumers=tuple(b.consumers.get(r, [])),
            members=tuple(b.members.get(r, [])),
            fixed=b.fixed.get(r),
            granularity=b.granularity.get(r, 1),
            blocks=b.blocks.get(r, 1),
        )
        for r in roots
    ]
    used = {g.name for g in groups}

    def traced(t: Traced) -> TensorInfo:
        return TensorInfo(t.shape, b.group_layout(t.layout, names))

    bindings = {}
    for name, (kind, lin, lout) in b.bindings.items():
        gin, gout = b.group_layout(lin, names), b.group_layout(lout, names)
        assert gin is not None and gout is not None
        bindings[name] = Binding(name, kind, gin, gout)
    layers = [
        LayerRecord(name, kind, traced(x), traced(y), positions, kernel, groups_)
        for name, kind, x, y, positions, kernel, groups_ in b.layers
    ]
    ops = [OpRecord(name, tuple(traced(t) for t in tensors), buffers)
           for name, tensors, buffers in b.ops]
    parameters = {}
    for pname, (axis, layout) in b.parameters.items():
        glayout = b.group_layout(layout, names)
        assert glayout is not None
        parameters[pname] = ParamBinding(pname, axis, glayout)
    fixed_macs = [MacRecord(name, macs, b.group_layout(layout, names))
                  for name, macs, layout in b.fixed_macs]
    msgs = list(b.messages)
    if b.limited:
        by_reason: dict[str, list[str]] = {}
        for op, why in b.limited.items():
            by_reason.setdefault(why, []).append(op)
        listed = "; ".join(
            f"{why}: {', '.join(ops[:3])}" + (f" and {len(ops) - 3} more" if len(ops) > 3 else "")
            for why, ops in by_reason.items())
        msgs.append(f"widthsearch keeps the channels of these ops at full width ({listed})")
        warnings.warn(msgs[-1], stacklevel=3)
    if b.unknown:
        fixed_groups = sorted({
            names[b.find(s)] for s, why in b.fixed.items()
            if any(op in why for op in b.unknown)
        } & used)
        listed = ", ".join(f"{n} ({w})" for n, w in b.unknown.items())
        msgs.append(
            f"widthsearch has no channel rule for: {listed}; the channels they touch stay at "
            f"full width (groups: {', '.join(fixed_groups) or 'none'}). Register a rule with "
            "widthsearch.discovery.register_rule to slim them."
        )
        warnings.warn(msgs[-1], stacklevel=3)
    params_total = sum(p.numel() for p in model.parameters())
    return ChannelGraph(groups, bindings, layers, ops, msgs, params_total, parameters,
                        fixed_macs, b.output_buffers or ())
