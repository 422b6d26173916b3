"""widthsearch: find how many channels each layer of a CNN should keep under a budget."""

__version__ = "0.1.0"

from ._startup import quiet_interrupt_while_starting  # noqa: E402

quiet_interrupt_while_starting()  # the command line: Ctrl-C during imports is one line
from . import models, patterns  # noqa: E402
from .build import LoadedRun, load_supernet  # noqa: E402
from .cost import Cost, CostModel  # noqa: E402
from .discovery import discover, register_rule  # noqa: E402
from .errors import WidthSearchError  # noqa: E402
from .evaluate import Evaluator, Score  # noqa: E402
from .export import load, save, to_onnx  # noqa: E402
from .search import search_widths  # noqa: E402
from .slimmable import SlimmableNet, load_slimmable  # noqa: E402
from .space import ChannelGroup, WidthConfig, WidthSpace  # noqa: E402
from .supernet import Supernet  # noqa: E402

__all__ = [
    "ChannelGroup", "Cost", "CostModel", "Evaluator", "LoadedRun", "Score", "Supernet",
    "SlimmableNet", "WidthConfig", "WidthSearchError", "WidthSpace", "discover", "load",
    "load_slimmable", "load_supernet", "models", "patterns", "register_rule", "save",
    "search_widths", "to_onnx",
]
