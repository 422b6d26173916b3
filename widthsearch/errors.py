"""The one exception type for mistakes a user can make (bad config, unknown model, bad data)."""


class WidthSearchError(ValueError):
    """A user-facing error: the CLI prints its message alone and exits non-zero."""
