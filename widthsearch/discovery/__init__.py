"""Channel-group discovery: trace a model with torch.fx and union the coupled channel dims.

Every tensor's channel axis is described by a `Layout`: which channel *spaces* it holds, in
order (a concatenation holds several), and how many entries one channel spans (after a
flatten). Spaces that an op couples are merged by union-find; the merged sets are the
channel groups. Each op type has a rule in a table (`RULES`), so supporting a new op is one
registration; an op without a rule fixes the channels it touches and says so in a warning.

The package is split by concern: `records` (the data discovery produces), `rules` (the rule
table and the API rules use), `builder` (the union-find), `tracer` (tracing and
`discover()`) and `ops` (the rules, one module per family, registered on import).
"""

from . import ops  # noqa: F401  (registers every rule family into RULES)
from .builder import INHERENT_REASONS
from .ops.attention import MATMUL_OPS, matmul_rule, multihead_attention_rule
from .ops.core import (
    BINARY_OPS,
    PASSTHROUGH_FUNCTIONS,
    PASSTHROUGH_METHODS,
    PASSTHROUGH_MODULES,
    binary_rule,
    cat_rule,
    conv2d_rule,
    conv_rule,
    expand_rule,
    getitem_rule,
    linear_rule,
    norm_rule,
    passthrough_rule,
    permute_rule,
    reduce_rule,
    reshape_rule,
    shape_query_rule,
    softmax_rule,
    transpose_rule,
)
from .ops.splits import split_rule
from .ops.torchvision import patch_merging_rule, position_bias_rule, window_attention_rule
from .records import (
    Binding,
    ChannelGraph,
    GroupInfo,
    GroupLayout,
    LayerRecord,
    Layout,
    MacRecord,
    Mix,
    OpRecord,
    ParamBinding,
    Part,
    TensorInfo,
    describe_groups,
)
from .rules import RULES, Rule, RuleContext, RuleTable, Traced, container_rule, register_rule
from .tracer import counted_attention, discover, trace

__all__ = [
    "BINARY_OPS", "INHERENT_REASONS", "MATMUL_OPS", "PASSTHROUGH_FUNCTIONS",
    "PASSTHROUGH_METHODS", "PASSTHROUGH_MODULES", "RULES", "Binding", "ChannelGraph",
    "GroupInfo", "GroupLayout", "LayerRecord", "Layout", "MacRecord", "Mix", "OpRecord",
    "ParamBinding", "Part", "Rule", "RuleContext", "RuleTable", "TensorInfo", "Traced",
    "binary_rule", "cat_rule", "container_rule", "conv2d_rule", "conv_rule", "counted_attention",
    "describe_groups", "discover", "expand_rule", "getitem_rule", "linear_rule",
    "matmul_rule", "multihead_attention_rule", "norm_rule", "passthrough_rule",
    "patch_merging_rule", "permute_rule", "position_bias_rule", "reduce_rule",
    "register_rule", "reshape_rule", "shape_query_rule", "softmax_rule", "split_rule",
    "trace", "transpose_rule", "window_attention_rule",
]
