"""Model zoo: `get(name, **kwargs)` builds any registered model, `list()` names them all.

Zoo models (resnet20, resnet56, mobilenetv2) are for 28-32 px inputs; any torchvision
classification model is available as "torchvision:<name>" (random init or a local file).
"""

from widthsearch.models import cifar as _cifar  # noqa: F401  (registers the zoo builders)
from widthsearch.models.registry import (
    default_input_size,
    get,
    is_registered,
    list_models,
    register,
    smallest_input_size,
)

list = list_models  # noqa: A001  (timm-style `models.list()`; shadows the builtin only here)

__all__ = [
    "get",
    "list",
    "list_models",
    "register",
    "default_input_size",
    "smallest_input_size",
    "is_registered",
]
