"""widthsearch: find how many channels each layer of a CNN should keep under a budget."""

__version__ = "0.1.0"
