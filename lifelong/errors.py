"""Errors the CLI turns into exit status 2 with a one-paragraph message instead of a traceback."""


class UserError(Exception):
    """Something the user can fix: a config field, an unknown name, a missing or malformed file.

    The message names the field, the name or the file, and what was expected; the CLI prints it
    and exits with status 2.
    """


class ConfigError(UserError):
    """A pipeline file or ``--set`` override that does not validate."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)
