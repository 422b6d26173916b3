"""The rule families, one module each; importing this package registers all into `RULES`.

A new family is one more module here and one more line in the import list below. The timm
family registers itself at the first discovery after timm is imported (`timm.install`).
"""

from . import (  # noqa: F401  (imported for their registrations)
    attention,
    core,
    splits,
    timm,
    torchvision,
)
