"""widthsearch: find how many channels each layer of a CNN should keep under a budget."""

__version__ = "0.1.0"

try:
    from . import models, patterns  # noqa: E402
    from .cost import Cost, CostModel  # noqa: E402
    from .errors import WidthSearchError  # noqa: E402
    from .export import load, save, to_onnx  # noqa: E402
    from .graph import discover, register_rule  # noqa: E402
    from .space import ChannelGroup, WidthConfig, WidthSpace  # noqa: E402
    from .supernet import Supernet  # noqa: E402
except KeyboardInterrupt:  # Ctrl-C while the command line starts: one line, not a traceback
    from ._startup import interrupted_while_starting

    interrupted_while_starting()
    raise

__all__ = [
    "ChannelGroup", "Cost", "CostModel", "Supernet", "WidthConfig", "WidthSearchError",
    "WidthSpace", "discover", "load", "models", "patterns", "register_rule", "save", "to_onnx",
]
