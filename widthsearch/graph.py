"""Compatibility module: discovery now lives in the `widthsearch.discovery` package.

Every name this module used to define is re-exported from where it is defined now. Rebinding
a name here (monkeypatching) does not reach the rules; patch the defining module instead.
"""

from .discovery.builder import (  # noqa: F401
    INHERENT_REASONS,
    _Builder,
)
from .discovery.ops.attention import (  # noqa: F401
    MATMUL_OPS,
    matmul_rule,
    multihead_attention_rule,
)
from .discovery.ops.core import (  # noqa: F401
    BINARY_OPS,
    PASSTHROUGH_FUNCTIONS,
    PASSTHROUGH_METHODS,
    PASSTHROUGH_MODULES,
    _bind_parameter,
    _index_layout,
    _norm_rule,
    _reshape_layout,
    _tie_sizes,
    _unsplit,
    binary_rule,
    cat_rule,
    conv2d_rule,
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
from .discovery.ops.splits import (  # noqa: F401
    _cut_segments,
    _exact_or_positional_cut,
    _fixed_pieces,
    _pieces_follow_width,
    _stuck,
    split_rule,
)
from .discovery.ops.torchvision import (  # noqa: F401
    _stochastic_depth_targets,
    _torchvision,
    patch_merging_rule,
    position_bias_rule,
    window_attention_rule,
)
from .discovery.records import (  # noqa: F401
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
from .discovery.rules import (  # noqa: F401
    _SPLIT_AWARE,
    RULES,
    Rule,
    RuleContext,
    RuleTable,
    Traced,
    _bind,
    _channel_input,
    _constant_input,
    _Dim,
    _fixed_in_out,
    _flatten,
    _has_mix,
    _limited,
    _module_output,
    _on_axis,
    _output_axis,
    _unknown,
    container_rule,
    register_rule,
)
from .discovery.tracer import (  # noqa: F401
    _apply_rule,
    _describe,
    _finish,
    _record_training_graph,
    _Recorder,
    _Tracer,
    _training_graph,
    counted_attention,
    discover,
    trace,
)
