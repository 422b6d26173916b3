"""Coverage: every torchvision classification model converts and keeps the core invariants.

Each model runs at its smallest valid input: discovery, a forward at random widths and
assignments for every pattern, export equivalence to 1e-5 and exact MACs (FlopCounterMode
/ 2), and a training-mode forward (auxiliary heads). One model per family runs in CI; the
rest are marked slow (`make test-all`). Also here: the rules the coverage needed (grouped
convolutions, layer scales, channel shuffles, auxiliary heads), the named warning for an
op without a rule, and the code of docs/rules.md.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision
from conftest import PATTERNS, assert_exports_exactly, randomize_norms, widthsearch_classes

import widthsearch as ws
from widthsearch import coverage
from widthsearch.supernet import macs_of

ALL_TV = tuple(torchvision.models.list_models(module=torchvision.models))
FAST = ("resnext50_32x4d", "regnet_y_400mf", "shufflenet_v2_x0_5", "convnext_tiny",
        "densenet121", "googlenet", "squeezenet1_0", "vgg11", "inception_v3")
PARTIAL = ("vit_", "swin_", "maxvit_")
"""Families with constructs that cannot slim (see docs/coverage.md); every other is full."""
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _params(names: tuple[str, ...]) -> list:
    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in names]


def _build(name: str, pattern: str) -> tuple[ws.Supernet, torch.Tensor, list[str]]:
    side = ws.models.smallest_input_size(f"torchvision:{name}")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torchvision's init notices
        model = randomize_norms(ws.models.get(f"torchvision:{name}", num_classes=10))
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = ws.Supernet(model, x[:1], pattern=pattern)
    return net, x, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _choice(net: ws.Supernet, pattern: str, cfg, gen: torch.Generator):
    if pattern == "cafenet":
        return net.sample_choice(cfg, gen)
    return 1 if pattern == "bcnet" else None


def test_every_model_is_listed() -> None:
    assert len(ALL_TV) >= 80 and set(FAST) <= set(ALL_TV)
    assert coverage.model_names() == list(ALL_TV)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("name", _params(ALL_TV))
def test_model_converts_and_keeps_the_invariants(name: str, pattern: str) -> None:
    net, x, messages = _build(name, pattern)
    fixed = [g for g in net.space.groups if not g.slimmable
             and coverage.reason_of(g.fixed or "") not in coverage.INHERENT]
    if name.startswith(PARTIAL):
        assert net.space.searchable, "a partial model still slims somewhere"
        assert messages or all("split of the channel axis" in (g.fixed or "") for g in fixed)
    else:
        assert fixed == [], [g.details() for g in fixed]
        assert messages == []
    assert not any("fail to run when slimmed" in m for m in messages)

    net.eval()
    gen = torch.Generator().manual_seed(1)
    configs = [net.space.min(), net.space.sample(gen)]
    if pattern == "leftmost":
        configs.append(net.space.max())
    for cfg in configs:
        choice = _choice(net, pattern, cfg, gen)
        with torch.no_grad(), net.activate(cfg, choice):
            expected = net(x)
        sub = net.export(cfg, choice).eval()
        assert widthsearch_classes(sub) == []
        with torch.no_grad():
            torch.testing.assert_close(sub(x), expected, rtol=1e-5, atol=1e-5)
        assert net.cost(cfg).macs == macs_of(sub, x)

    if pattern == "leftmost":  # the training graph, auxiliary heads included
        net.train()
        with net.activate(net.space.min()):
            out = net(x)
        logits = out[0] if isinstance(out, tuple) else out
        assert logits.shape == (2, 10)


def test_inception_trains_with_its_auxiliary_head() -> None:
    """Regression: discovery traced only the inference graph, so the auxiliary classifier
    kept full-width convs and crashed on slimmed features in training mode."""
    net, x, _ = _build("inception_v3", "leftmost")
    aux = net.model.AuxLogits
    assert type(aux.conv0.conv).__name__ == "DynamicConv2d"
    assert net.cost_model.full.macs == macs_of(net.export(net.space.max()).eval(), x)
    net.train()
    cfg = net.space.sample(torch.Generator().manual_seed(3))
    with net.activate(cfg):
        out = net(x)
    assert out.aux_logits.shape == out.logits.shape == (2, 10)
    (out.logits.sum() + out.aux_logits.sum()).backward()
    sub = net.export(cfg).train()
    torch.manual_seed(0)
    assert sub(x).aux_logits.shape == (2, 10)


class _Grouped(nn.Module):
    """A grouped conv with equal widths (whole groups kept) and one with unequal widths
    (every group kept, the same channels inside each)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.same = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(16)
        self.mid = nn.Conv2d(16, 24, 1)
        self.wide = nn.Conv2d(24, 32, 3, padding=1, groups=4)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.same(self.stem(x))))
        return self.fc(self.wide(self.mid(x)).mean((2, 3)))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_grouped_convolutions_slim_and_export(pattern: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    net = ws.Supernet(randomize_norms(_Grouped()), x[:1], pattern=pattern)
    kinds = {n: b.kind for n, b in net.graph.bindings.items()}
    assert kinds["same"] == "grouped" and kinds["wide"] == "groupwise"
    stem, mid, wide = net.space["stem"], net.space["mid"], net.space["wide"]
    assert stem.slimmable and stem.granularity == 4 and stem.blocks == 1
    for group in (mid, wide):  # the same number of channels in each of the 4 conv groups
        assert group.slimmable and group.blocks == 4 and all(w % 4 == 0 for w in group.choices)
    net.eval()
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        cfg = net.space.sample(gen)
        choice = _choice(net, pattern, cfg, gen)
        with torch.no_grad(), net.activate(cfg, choice):
            expected = net(x)
        sub = net.export(cfg, choice).eval()
        assert sub.same.groups == cfg["stem"] // 4 and sub.wide.groups == 4
        with torch.no_grad():
            torch.testing.assert_close(sub(x), expected, rtol=1e-6, atol=1e-5)
        assert net.cost(cfg).macs == macs_of(sub, x)
        assert net.cost(cfg).params == sum(p.numel() for p in sub.parameters())
        ws.save(sub, tmp_path / "grouped")
        loaded = ws.load(tmp_path / "grouped", model=_Grouped()).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), expected, rtol=1e-6, atol=1e-5)


def test_layer_scale_is_sliced_and_saved(tmp_path: Path) -> None:
    net, x, _ = _build("convnext_tiny", "cafenet")
    assert "features.1.0.layer_scale" in net.graph.parameters
    assert set(net.model.state_dict()) == set(
        ws.models.get("torchvision:convnext_tiny", num_classes=10).state_dict())
    net.eval()
    gen = torch.Generator().manual_seed(2)
    cfg = net.space.sample(gen)
    choice = net.sample_choice(cfg, gen)
    with torch.no_grad(), net.activate(cfg, choice):
        expected = net(x)
    sub = net.export(cfg, choice).eval()
    block = sub.features[1][0]
    assert type(block).__name__ == "CNBlock"
    assert block.layer_scale.shape[0] == block.block[0].out_channels < 96
    assert net.cost(cfg).params == sum(p.numel() for p in sub.parameters())
    ws.save(sub, tmp_path / "convnext")
    loaded = ws.load(tmp_path / "convnext").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)


def test_a_parameter_used_elsewhere_stays_full() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.gamma = nn.Parameter(torch.rand(8, 1, 1))
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x) * self.gamma
            return self.fc(y.mean((2, 3))) + self.gamma.sum()

    x = torch.randn(1, 3, 8, 8)
    net = ws.Supernet(Scaled(), x)
    assert net.graph.parameters == {}
    assert not net.space["conv"].slimmable
    assert "also used where it cannot be sliced" in net.space["conv"].fixed


def test_shufflenet_stage_widths_all_slim() -> None:
    """Regression: an exact chunk after every shuffle forced a stage of n blocks into
    2^(n-1) equal blocks, which 24 or 58 channels do not divide, so those stages stayed full;
    the chunk that cannot cut exactly now cuts by position."""
    net, x, messages = _build("shufflenet_v2_x0_5", "cafenet")
    assert messages == []
    assert [g.name for g in net.space.groups if not g.slimmable] == ["input", "fc"]
    stage2 = net.space["stage2.0.branch1.2"]  # both branches and all 4 blocks of stage 2
    assert stage2.blocks == 8 and stage2.choices == (8, 16, 24)  # every cut exact
    stage3 = net.space["stage3.0.branch1.2"]  # 48 channels: the 5th halving falls inside
    assert stage3.blocks == 16 and stage3.choices == (16, 32, 48)


class _Shuffled(nn.Module):
    """ShuffleNet-style units: concatenate, shuffle in two, chunk in halves. With the
    defaults the first chunk cuts the two 6-channel spaces into exact halves of 3, the
    second cannot halve 3."""

    def __init__(self, half: int = 6, units: int = 2) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, half, 1), nn.Conv2d(3, half, 1)
        self.units = nn.ModuleList(nn.Conv2d(half, half, 1) for _ in range(units))
        self.fc = nn.Linear(2 * half, 2)

    @staticmethod
    def shuffle(x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(torch.cat([self.a(x), self.b(x)], 1))
        for unit in self.units:
            keep, work = y.chunk(2, dim=1)
            y = self.shuffle(torch.cat([keep, unit(work)], 1))
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_chunk_after_shuffles_takes_its_share_by_position(pattern: str) -> None:
    x = torch.randn(2, 3, 4, 4)
    net = ws.Supernet(_Shuffled(), x[:1], pattern=pattern)
    group = net.space["a"]  # both branches and both units keep one width
    assert group.size == 6 and group.blocks == 2 and group.choices == (2, 4, 6)  # 1st cut exact
    assert set(group.producers) == {"a", "b", "units.0", "units.1"}
    assert_exports_exactly(net, x)
    _exports_at_min(net, x)
    assert net.export(net.space.min()).units[1].weight.shape[:2] == (2, 2)


def _exports_at_min(net: ws.Supernet, x: torch.Tensor) -> None:
    cfg = net.space.min()
    choice = net.sample_choice(cfg, torch.Generator().manual_seed(0))
    with torch.no_grad(), net.activate(cfg, choice):
        expected = net(x)
    with torch.no_grad():
        torch.testing.assert_close(net.export(cfg, choice).eval()(x), expected)


class _CatThenCut(nn.Module):
    """Two groups concatenated, then cut into equal pieces (`chunk` or `tensor_split`)."""

    def __init__(self, sizes: tuple[int, int], pieces: int, op: str) -> None:
        super().__init__()
        self.op, self.pieces = op, pieces
        self.a, self.b = nn.Conv2d(3, sizes[0], 1), nn.Conv2d(3, sizes[1], 1)
        piece = sum(sizes) // pieces
        self.heads = nn.ModuleList(nn.Conv2d(piece, 2, 1) for _ in range(pieces))
        self.fc = nn.Linear(2 * pieces, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], 1)
        parts = y.chunk(self.pieces, 1) if self.op == "chunk" else \
            torch.tensor_split(y, sections=self.pieces, dim=1)
        outs = [self.heads[i](parts[i]) for i in range(self.pieces)]  # traceable indexing
        return self.fc(torch.cat(outs, 1).mean((2, 3)))


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize(("sizes", "pieces", "op", "tied"), [
    ((4, 4), 2, "chunk", True),  # exact: the pieces are a and b, whose widths get tied
    ((6, 3), 3, "chunk", False),  # the exact pieces (half a, half a, b) cannot keep one width
    ((4, 2), 2, "tensor_split", False),  # the cut falls inside a: by position
])
def test_equal_pieces_of_a_concatenation_keep_equal_widths(
        sizes: tuple[int, int], pieces: int, op: str, tied: bool, pattern: str) -> None:
    """Regression: the exact cut of cat(a, b).chunk(2) gave pieces a and b with free
    widths, while the narrow chunk halves wa + wb: the supernet failed at most widths."""
    x = torch.randn(2, 3, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        net = ws.Supernet(_CatThenCut(sizes, pieces, op), x[:1], pattern=pattern)
    assert net.space["a"].slimmable
    assert ("b" not in net.space.names) == tied
    assert_exports_exactly(net, x)
    _exports_at_min(net, x)


def test_exact_cuts_never_leave_a_group_one_channel_per_block() -> None:
    """Regression: 8-channel halves through 4 shuffle units were cut exactly into 8 blocks
    of one channel, which left the group at full width with no reason given."""
    x = torch.randn(2, 3, 4, 4)
    net = ws.Supernet(_Shuffled(half=8, units=4), x[:1])
    group = net.space["a"]
    assert group.slimmable and group.blocks < group.size
    assert_exports_exactly(net, x)


def test_a_reshape_sized_by_another_width_ties_the_two() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(3, 8, 1)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.a(x), self.b(x)
            y = b.flatten(2).reshape(x.shape[0], a.shape[1], -1)  # b, sized by a's width
            return self.fc(y.mean(-1))

    x = torch.randn(2, 3, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "fails to run when slimmed"
        net = ws.Supernet(Tied(), x[:1], pattern="cafenet")
    assert net.space["a"].slimmable and "b" not in net.space.names
    assert_exports_exactly(net, x)


def test_splitting_a_concatenation_back_keeps_its_groups() -> None:
    class Split(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(3, 4, 1)
            self.c = nn.Conv2d(8, 6, 1)
            self.d = nn.Conv2d(4, 6, 1)
            self.fc = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.a(x), self.b(x)
            p, q = torch.split(torch.cat([a, b], 1), [a.shape[1], b.shape[1]], dim=1)
            return self.fc((self.c(p) + self.d(q)).mean((2, 3)))

    x = torch.randn(2, 3, 4, 4)
    net = ws.Supernet(Split(), x[:1], pattern="bcnet")
    assert net.space["a"].slimmable and net.space["b"].slimmable
    assert_exports_exactly(net, x)


def test_unknown_op_converts_with_a_named_warning() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.fliplr(self.a(x))  # no rule: flips the channel axis
            return self.fc(self.b(h).mean((2, 3)))

    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"no channel rule for: fliplr \(fliplr\).*groups: a"):
        net = ws.Supernet(Odd(), x[:1])
    assert not net.space["a"].slimmable and "no rule for fliplr" in net.space["a"].fixed
    assert net.space["b"].slimmable
    cfg = net.space.min()
    net.eval()
    with torch.no_grad(), net.activate(cfg):
        torch.testing.assert_close(net.export(cfg).eval()(x), net(x))


def test_docs_rules_examples_run() -> None:
    """The code of docs/rules.md, run top to bottom as one script."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "rules.md").read_text(), re.S)
    assert len(blocks) >= 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        exec(compile("\n".join(blocks), str(DOCS / "rules.md"), "exec"),  # noqa: S102
             {"__name__": "docs_rules", "print": lambda *a, **k: None})


def test_coverage_table_renders() -> None:
    report = coverage.check_model("squeezenet1_1", configs=1)
    assert report.verified and report.status == "full" and report.slimmable_share > 0.9
    partial = coverage.ModelReport("swin_t", 32, groups=3, searchable=1,
                                   fixed={"Swin window attention": 2})
    text = coverage.render([report, partial])
    assert "| squeezenet1_1 | 32 | " in text and "| full |" in text
    assert "partial (2 groups: Swin window attention)" in text
    assert "Do not edit by hand" in text and "Swin: the window attention" in text


def test_published_table_lists_every_model() -> None:
    """docs/coverage.md (regenerate with `make coverage`) has a row for every model, none
    failed or unverified, and every model outside the partial families is full."""
    table = (DOCS / "coverage.md").read_text()
    rows = {cells[1]: cells for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| model")
            for cells in [[c.strip() for c in line.split("|")]]}
    assert set(rows) == set(ALL_TV)
    for name, cells in rows.items():
        verified, status = cells[-3], cells[-2]
        assert verified == "yes", (name, verified)
        assert status.startswith("partial" if name.startswith(PARTIAL) else "full"), name
