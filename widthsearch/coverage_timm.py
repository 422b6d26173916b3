"""The timm coverage table: one default variant of every timm CNN family, verified.

A family is a set of timm model names (shell patterns inside one timm module) that share
their building blocks; its default variant is the one with the fewest parameters (counted
on the meta device, so no weights are made). Each variant is checked as torchvision's models
are (`coverage.check_model`: full-width equality with the original model, export
equivalence and exact MACs at min / max / random widths and assignments, a training-mode
forward) at its small input (`models.smallest_input_size`, 64 px unless it needs more),
with random weights.

    python -m widthsearch coverage --zoo timm --out docs/coverage-timm.md   # make coverage-timm

`--cache DIR` keeps one JSON report per variant and reuses those that came out full and
verified, so a rerun checks only the families that still fail or are partial.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .coverage import TOLERANCE, ModelReport, _macs, _status, _verified


@dataclass(frozen=True)
class Family:
    """A timm CNN family: model names matching `patterns` in timm module `module`."""

    name: str
    module: str
    patterns: tuple[str, ...]
    exclude: tuple[str, ...] = ()


def _f(name: str, module: str, *patterns: str, exclude: tuple[str, ...] = ()) -> Family:
    return Family(name, module, patterns or (f"{name}*",), exclude)


FAMILIES: tuple[Family, ...] = (
    # ResNet and its relatives (timm.models.resnet)
    _f("resnet", "resnet", "resnet[0-9]*", exclude=("*_gn",)),
    _f("resnext", "resnet", "resnext*"),
    _f("seresnet", "resnet", "seresnet[0-9]*"),
    _f("seresnext", "resnet", "seresnext*"),
    _f("ecaresnet", "resnet", "ecaresnet*"),
    _f("resnetblur", "resnet", "resnetblur*"),
    _f("resnetaa", "resnet", "resnetaa*"),
    _f("resnetrs", "resnet", "resnetrs*"),
    _f("wide_resnet", "resnet", "wide_resnet*"),
    _f("resnetv2", "resnetv2", "resnetv2_*", exclude=("*_bit*", "*_gn", "*_evos", "*_frn")),
    _f("bit", "resnetv2", "resnetv2_*_bit*"),
    _f("nfnet", "nfnet", "nfnet_*", "dm_nfnet_*", "eca_nfnet_*"),
    _f("nf_resnet", "nfnet", "nf_resnet*", "nf_seresnet*", "nf_ecaresnet*"),
    _f("nf_regnet", "nfnet", "nf_regnet*"),
    _f("res2net", "res2net", "res2net*", "res2next*"),
    _f("sknet", "sknet", "skresnet*", "skresnext*"),
    _f("resnest", "resnest"),
    _f("legacy_senet", "senet", "legacy_*"),
    _f("tresnet", "tresnet"),
    _f("selecsls", "selecsls"),
    _f("dla", "dla"),
    _f("dpn", "dpn"),
    _f("densenet", "densenet"),
    _f("vgg", "vgg"),
    # RegNet and friends
    _f("regnetx", "regnet", "regnetx_*"),
    _f("regnety", "regnet", "regnety_*"),
    _f("regnetv", "regnet", "regnetv_*"),
    _f("regnetz", "byobnet", "regnetz_*"),
    # BYOB nets
    _f("repvgg", "byobnet", "repvgg_*"),
    _f("mobileone", "byobnet", "mobileone_*"),
    _f("gernet", "byobnet", "gernet_*"),
    _f("gcresnet", "byobnet", "gcresnet*", "gcresnext*"),
    _f("resnet_ts", "byobnet", "resnet*ts", "seresnext*ts"),
    _f("resnet_q", "byobnet", "resnet*q"),
    # EfficientNet and the mobile nets built from its blocks
    _f("efficientnet", "efficientnet", "efficientnet_b?"),
    _f("efficientnet_gn", "efficientnet", "efficientnet_b?_gn", "efficientnet_b?_g*_gn"),
    _f("efficientnet_evos", "efficientnet", "efficientnet_b?_g*_evos"),
    _f("efficientnetv2", "efficientnet", "efficientnetv2_*"),
    _f("efficientnet_edge", "efficientnet", "efficientnet_e[sml]*"),
    _f("efficientnet_lite", "efficientnet", "efficientnet_lite*"),
    _f("tf_efficientnet", "efficientnet", "tf_efficientnet_b?"),
    _f("tf_efficientnetv2", "efficientnet", "tf_efficientnetv2_*"),
    _f("tf_efficientnet_lite", "efficientnet", "tf_efficientnet_lite*"),
    _f("mixnet", "efficientnet", "mixnet_*"),
    _f("tf_mixnet", "efficientnet", "tf_mixnet_*"),
    _f("mnasnet", "efficientnet", "mnasnet_*", "semnasnet_*"),
    _f("spnasnet", "efficientnet", "spnasnet_*"),
    _f("fbnetc", "efficientnet", "fbnetc_*"),
    _f("mobilenetv1", "efficientnet", "mobilenetv1_*"),
    _f("mobilenetv2", "efficientnet", "mobilenetv2_*"),
    _f("tinynet", "efficientnet", "tinynet_*"),
    _f("mobilenetv3", "mobilenetv3", "mobilenetv3_*"),
    _f("tf_mobilenetv3", "mobilenetv3", "tf_mobilenetv3_*"),
    _f("mobilenetv4", "mobilenetv3", "mobilenetv4_conv*"),
    _f("fbnetv3", "mobilenetv3", "fbnetv3_*"),
    _f("lcnet", "mobilenetv3", "lcnet_*"),
    _f("lcnetv2", "lcnetv2"),
    _f("hardcorenas", "hardcorenas"),
    _f("ghostnet", "ghostnet", "ghostnet_*"),
    _f("ghostnetv2", "ghostnet", "ghostnetv2_*"),
    _f("ghostnetv3", "ghostnet", "ghostnetv3_*"),
    _f("repghost", "repghost"),
    _f("rexnet", "rexnet"),
    _f("repvit", "repvit"),
    # ConvNeXt and other modern CNNs
    _f("convnext", "convnext", "convnext_*"),
    _f("convnextv2", "convnext", "convnextv2_*"),
    _f("inception_next", "inception_next"),
    _f("rdnet", "rdnet"),
    _f("starnet", "starnet"),
    _f("fasternet", "fasternet"),
    _f("mambaout", "mambaout"),
    _f("poolformer", "metaformer", "poolformer_*"),
    _f("poolformerv2", "metaformer", "poolformerv2_*"),
    _f("convformer", "metaformer", "convformer_*"),
    _f("convmixer", "convmixer"),
    _f("fastvit", "fastvit", "fastvit_t*", "fastvit_s*"),
    _f("hgnet", "hgnet", "hgnet_*"),
    _f("hgnetv2", "hgnet", "hgnetv2_*"),
    # CSP / Darknet
    _f("cspresnet", "cspnet", "cspresnet*", "cspresnext*"),
    _f("cspdarknet", "cspnet", "cspdarknet*"),
    _f("darknet", "cspnet", "darknet*"),
    _f("cs3darknet", "cspnet", "cs3*"),
    _f("cspnext", "cspnext"),
    # multi-branch classics
    _f("hrnet", "hrnet", "hrnet_*"),
    _f("vovnet", "vovnet", "ese_vovnet*", "eca_vovnet*", exclude=("*_evos",)),
    _f("xception", "xception_aligned", "xception*"),
    _f("legacy_xception", "xception", "legacy_xception"),
    _f("inception_v3", "inception_v3", "inception_v3"),
    _f("inception_v4", "inception_v4", "inception_v4"),
    _f("inception_resnet_v2", "inception_resnet_v2", "inception_resnet_v2"),
)
"""The timm CNN families (attention-based and hybrid families are not listed)."""


def candidates(family: Family) -> list[str]:
    """The timm model names of `family`."""
    import timm

    names: set[str] = set()
    for pattern in family.patterns:
        names.update(timm.list_models(pattern, module=family.module))
    return sorted(n for n in names if not any(fnmatch.fnmatchcase(n, e) for e in family.exclude))


def parameter_count(name: str) -> int:
    """Parameters of timm model `name`, built on the meta device (no memory, no weights)."""
    import timm

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False, num_classes=10)
    return sum(p.numel() for p in model.parameters())


def default_variant(family: Family) -> str:
    """The family's variant with the fewest parameters (ties: the first name)."""
    names = candidates(family)
    if not names:
        from .errors import WidthSearchError

        raise WidthSearchError(f"timm family {family.name!r} matches no model")
    counted = []
    for n in names:
        try:
            counted.append((parameter_count(n), n))
        except Exception:  # noqa: S112 - a variant that cannot build on meta is not a default
            continue
    return min(counted)[1] if counted else names[0]


def default_variants(fams: Sequence[Family], cache: Path | None = None) -> list[str]:
    """`default_variant` of each family; with a cache dir, remembered per timm version."""
    import timm

    path = None if cache is None else cache / f"variants-timm-{timm.__version__}.json"
    known: dict[str, str] = {}
    if path is not None and path.is_file():
        known = json.loads(path.read_text())
    out = [known.get(f.name) or default_variant(f) for f in fams]
    if path is not None:
        known.update({f.name: v for f, v in zip(fams, out, strict=True)})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=1, sort_keys=True))
    return out


def families(patterns: Sequence[str] = ()) -> list[Family]:
    """FAMILIES, optionally only those whose name matches a shell pattern."""
    if not patterns:
        return list(FAMILIES)
    return [f for f in FAMILIES if any(fnmatch.fnmatchcase(f.name, p) for p in patterns)]


# ---------------------------------------------------------------------------------------------
# The per-variant cache


def load_cached(cache: Path, name: str) -> ModelReport | None:
    """The cached report of `name` when it is full and verified, else None (rerun it)."""
    path = cache / f"{name}.json"
    if not path.is_file():
        return None
    try:
        rep = ModelReport(**json.loads(path.read_text()))
    except (TypeError, ValueError):
        return None
    return rep if rep.verified and rep.status == "full" else None


def store(cache: Path, rep: ModelReport) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{rep.name}.json").write_text(json.dumps(dataclasses.asdict(rep), indent=1))


# ---------------------------------------------------------------------------------------------
# The table


def render(rows: Sequence[tuple[Family, ModelReport]]) -> str:
    """docs/coverage-timm.md for (family, report of its default variant) rows."""
    import timm

    reports = [r for _, r in rows]
    counts = Counter(r.status for r in reports)
    verified = sum(r.verified for r in reports)
    wrong = sum(r.silently_wrong for r in reports)
    n = len(reports) or 1
    lines = [
        "# Coverage: timm CNN families",
        "",
        "<!-- Generated by `make coverage-timm` (python -m widthsearch coverage --zoo timm "
        "--out docs/coverage-timm.md). Do not edit by hand. -->",
        "",
        f"One default variant of each timm CNN family (timm {timm.__version__}, torch "
        f"{torch.__version__.split('+')[0]}): the family's model with the fewest parameters, "
        "built with `ws.models.get(\"timm:<name>\", num_classes=10)` (random weights, timm's "
        "`exportable` layer config) and converted with `ws.Supernet(model, example_input, "
        "pattern=\"cafenet\")` at a small input (batch 1).",
        "",
        f"**{len(reports)} families: {counts.get('full', 0)} full "
        f"({100 * counts.get('full', 0) / n:.0f}%), {counts.get('partial', 0)} partial, "
        f"{counts.get('failed', 0)} failed; {verified} verified ({100 * verified / n:.0f}%); "
        f"{wrong} silently wrong.**",
        "",
        "- *verified*: at full width the supernet reproduces the original model's output, "
        "and at the smallest, the largest and random widths with random channel assignments "
        f"the exported plain model matches the supernet (both to {TOLERANCE:g}, relative to "
        "the output's scale when it exceeds 1) with FlopCounterMode MACs / 2 equal to "
        "`net.cost(cfg).macs`; a training-mode forward runs at the smallest widths.",
        "- *silently wrong*: converted without an error but computing another function at "
        "full width.",
        "- *groups*: slimmable channel groups / all groups that hold a layer's channels (the "
        "model input and the logits are always fixed); *slimmable MACs*: the share of the "
        "full model's MACs that involve a slimmable group.",
        "- *status*: **full** when every group but the model input and output slims, else "
        "**partial** with the fixed groups and why; **failed** with the error and the "
        "model code it came from.",
        "",
        "| family | variant | input | groups | slimmable MACs | MACs min / max | verified | "
        "status |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for fam, r in rows:
        status = _status(r)
        if r.error is not None and r.where:
            status += f" (at `{r.where}`)"
        lines.append(
            f"| {fam.name} | {r.name} | {r.input_size} | {r.searchable} / {r.groups} | "
            f"{100 * r.slimmable_share:.1f}% | {_macs(r.macs_min)} / {_macs(r.macs_max)} | "
            f"{_verified(r)} | {status.replace('|', '/')} |")
    partial = {fam.name for fam, r in rows if r.status == "partial"}
    notes = [f"- {text}" for names, text in NOTES if partial & set(names)]
    if notes:
        lines += ["", "## What keeps the partial families partial", "", *notes]
    return "\n".join(lines) + "\n"


NOTES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("mixnet", "tf_mixnet", "inception_next", "fasternet", "mambaout"),
     "MixNet's MixedConv2d, InceptionNeXt's InceptionDWConv2d, FasterNet's partial "
     "convolution and MambaOut's gated block split channels by sizes written in the model "
     "(`torch.split(x, [a, b], 1)`); the pieces cannot follow a width, so the channels "
     "they split stay full."),
    (("res2net",), "Res2Net splits by a fixed piece width (`torch.split(x, width, 1)`) "
     "and adds the pieces in a chain."),
    (("dpn", "rexnet"), "DPN and ReXNet index a fixed channel range (`x[:, :n]`, "
     "`x[:, 0:c] += shortcut`) that covers only part of the channels."),
    (("resnetblur", "tresnet"), "BlurPool2d built with a fixed channel count convolves "
     "with `groups=channels` of the full width."),
    (("poolformer", "poolformerv2", "convformer"), "MetaFormer's layer scale views its "
     "parameter to a shape stored at construction (`scale.view(self.shape)`)."),
    (("resnest", "skresnet"), "ResNeSt's split attention and SKNet's selective kernel "
     "reshape channels into radix / path groups and weight them with a softmax across "
     "them."),
    (("gcresnet",), "The global-context block pools with a matrix product of the features "
     "and a spatial attention map."),
    (("fastvit",), "FastViT's grouped convolutions widen each input channel into several "
     "output channels, so their groups are kept whole."),
    (("vgg",), "timm's VGG head (ConvMlp) resizes its input by a condition on its shape, "
     "which torch.fx cannot trace; it is kept whole (timm registers it as an fx leaf)."),
)
"""Why a family is partial, shown when it is (the table's reasons name the ops)."""


__all__ = ["FAMILIES", "Family", "candidates", "default_variant", "default_variants", "families", "load_cached",
           "parameter_count", "render", "store"]
