"""The one error type the model loaders raise for user mistakes."""

from __future__ import annotations


class ModelLoadError(Exception):
    """A checkpoint could not be loaded because of the user's input (a missing or damaged file,
    an unsupported architecture, ...).

    The message is one clear sentence meant for the user; the CLI prints it without a traceback.
    The underlying exception, if any, is chained as ``__cause__`` for debugging.
    """
