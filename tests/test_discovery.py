"""The discovery package: its layout by concern, the complete rule table on import, and the
`widthsearch.graph` compatibility module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

from widthsearch import discovery, graph
from widthsearch.discovery import RULES, passthrough_rule
from widthsearch.discovery.ops import attention, core, splits
from widthsearch.discovery.ops import torchvision as tv_rules

PACKAGE = Path(discovery.__file__).parent


@pytest.mark.parametrize(("target", "rule"), [
    (nn.Conv2d, core.conv2d_rule),
    (torch.cat, core.cat_rule),
    ("reshape", core.reshape_rule),
    (torch.chunk, splits.split_rule),
    ("unbind", splits.split_rule),
    (torch.matmul, attention.matmul_rule),
    (nn.MultiheadAttention, attention.multihead_attention_rule),
    (torchvision.ops.StochasticDepth, passthrough_rule),
    (torchvision.models.swin_transformer.shifted_window_attention,
     tv_rules.window_attention_rule),
])
def test_importing_the_package_registers_every_family(target, rule) -> None:
    if isinstance(target, str):
        assert RULES.methods[target] is rule
    elif isinstance(target, type):
        assert RULES.modules[target] is rule
    else:
        assert RULES.functions[target] is rule


def test_layernorm2d_has_its_own_norm_rule() -> None:
    from torchvision.models.convnext import LayerNorm2d

    rule = RULES.module_rule(LayerNorm2d(8))
    assert rule is not None and rule is not RULES.module_rule(nn.LayerNorm(8))


def test_graph_module_reexports_every_name_it_defined() -> None:
    """Every top-level name `widthsearch.graph` defined before the split is the same object
    from the shim as from its new module."""
    names = {
        n for node in ast.parse((PACKAGE.parent / "graph.py").read_text()).body
        if isinstance(node, ast.ImportFrom) for n in (a.name for a in node.names)
    }
    assert {"discover", "RULES", "register_rule", "passthrough_rule", "_Builder",
            "_exact_or_positional_cut", "_SPLIT_AWARE", "describe_groups"} <= names
    for name in ("discover", "RULES", "RuleTable", "Layout", "passthrough_rule", "norm_rule",
                 "counted_attention", "ChannelGraph"):
        assert getattr(graph, name) is getattr(discovery, name)
    assert graph._exact_or_positional_cut is splits._exact_or_positional_cut
    assert graph.register_rule.__self__ is RULES  # type: ignore[attr-defined]


def test_split_aware_rules_come_from_the_core_family() -> None:
    expected = {core.reshape_rule, core.permute_rule, core.transpose_rule, passthrough_rule,
                core.expand_rule, core.shape_query_rule}
    assert expected == graph._SPLIT_AWARE


LAYERS = {"records": 0, "rules": 1, "builder": 2, "tracer": 3, "ops": 4}


def _layer(path: Path) -> int:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return LAYERS.get(rel.parts[0], 5 if rel.parts[0] == "__init__" else -1)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.stem)
def test_modules_import_only_the_layers_below(path: Path) -> None:
    """records <- rules <- builder <- tracer <- ops: a module's run-time imports inside the
    package name only its own layer or lower ones (so there is no import cycle)."""
    own = _layer(path)
    assert own >= 0, path
    for node in ast.parse(path.read_text()).body:  # top level only: not `if TYPE_CHECKING`
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = path.parent
        for _ in range(node.level - 1):
            base = base.parent
        target = base / (node.module or "").replace(".", "/")
        if target == PACKAGE:  # `from . import ops`
            target = PACKAGE / node.names[0].name
        if not target.is_relative_to(PACKAGE):
            continue  # widthsearch.errors and friends
        assert _layer(target.with_suffix(".py")) <= own, (path.name, node.module)
