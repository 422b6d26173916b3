"""The rule families, one module each; importing this package registers all into `RULES`.

A new family is one more module here and one more line in the import list below.
"""

from . import (  # noqa: F401  (imported for their registrations)
    attention,
    core,
    splits,
    torchvision,
)
