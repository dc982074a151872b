"""Errors the CLI turns into exit status 2 with a one-paragraph message instead of a traceback.

Messages are bounded: a value quoted in one is cut with :func:`brief` (a 50 MB config value is
never echoed), and a whole message is cut at :data:`MAX_MESSAGE` characters whatever composed it.
A message names the field, the file and the offending value, never what a file contains: a path
given where a data file was expected must not turn its first line into an error message.
"""

from __future__ import annotations

from typing import Any

MAX_VALUE = 200  # characters of one quoted value (or field name) in a message
MAX_MESSAGE = 2000  # characters of a whole message


def clip(text: str, limit: int = MAX_VALUE) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was.

    >>> clip("x" * 500, 10)
    'xxxxxxxxxx… (500 characters)'
    """
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def brief(value: Any, limit: int = MAX_VALUE) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters; a long string says its own length.

    >>> brief("a" * 1000, 8)
    "'aaaaaaa… (1000 characters)"
    >>> brief([1.5, float("nan")])
    '[1.5, nan]'
    """
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{repr(value[:limit])[:limit]}… ({len(value)} characters)"  # never copies a huge string
    try:
        text = repr(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply to show>"
    return clip(text, limit)


class UserError(Exception):
    """Something the user can fix: a config field, an unknown name, a missing or malformed file.

    The message names the field, the name or the file, and what was expected; the CLI prints it
    and exits with status 2. It is cut at :data:`MAX_MESSAGE` characters.
    """

    def __init__(self, message: Any = "", *args: Any):
        super().__init__(clip(str(message), MAX_MESSAGE), *args)


class ConfigError(UserError):
    """A pipeline file or ``--set`` override that does not validate."""

    def __init__(self, field: str, message: str):
        self.field = field = clip(field)
        super().__init__(f"{field}: {message}" if field else message)


class Diverged(UserError):
    """Training kept producing non-finite losses or gradients, or a generation's weights are not finite.

    A user error (exit status 2): the learning rate, the data or a strategy's weight needs changing.
    """


class Interrupted(Exception):
    """The run was stopped by SIGTERM or SIGINT after finishing its batch and writing a checkpoint.

    Trackers receive it in ``on_run_failed`` and close with a "killed" status rather than a failure.
    """

    def __init__(self, signal_name: str, checkpoint: str | None = None):
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        where = f"; resume with --resume (checkpoint {checkpoint})" if checkpoint else ""
        super().__init__(f"stopped by {signal_name}{where}")
