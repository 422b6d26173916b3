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


class _GhostUnit(nn.Module):
    """cat([a, cheap(a)])[:, :out] plus a projection shortcut (GhostNet's block)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        half = cout // 2
        self.primary = nn.Sequential(nn.Conv2d(cin, half, 1), nn.BatchNorm2d(half), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(half, half, 3, padding=1, groups=half),
                                   nn.BatchNorm2d(half))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout))
        self.cout = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[:, :self.cout] + self.shortcut(x)


def test_a_projection_added_to_a_concatenation_is_cut_to_match_it() -> None:
    """The shortcut conv's output is cut into the concatenation's pieces, so every group
    slims, and the export equals the supernet with exact MACs."""
    import widthsearch as ws
    from widthsearch.supernet import macs_of

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), _GhostUnit(16, 32), _GhostUnit(32, 48),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 5)).eval()
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        ref = model(x)
    net = ws.Supernet(model, x, pattern="cafenet").eval()
    inner = [g for g in net.space.groups if g.name not in ("input", "5")]
    assert inner and all(g.slimmable for g in inner)
    assert {g.size for g in inner} == {16, 24}  # 32 and 48 cut into halves of the cats
    with torch.no_grad():
        assert torch.allclose(net(x), ref, atol=1e-6)
    gen = torch.Generator().manual_seed(0)
    for cfg in (net.space.min(), net.space.sample(gen)):
        choice = net.sample_choice(cfg, gen)
        with torch.no_grad(), net.activate(cfg, choice):
            expected = net(x)
        sub = net.export(cfg, choice).eval()
        with torch.no_grad():
            assert torch.allclose(sub(x), expected, atol=1e-6)
        assert net.cost(cfg).macs == macs_of(sub, x)
