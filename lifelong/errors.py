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


class Interrupted(Exception):
    """The run was stopped by SIGTERM or SIGINT after finishing its batch and writing a checkpoint.

    Trackers receive it in ``on_run_failed`` and close with a "killed" status rather than a failure.
    """

    def __init__(self, signal_name: str, checkpoint: str | None = None):
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        where = f"; resume with --resume (checkpoint {checkpoint})" if checkpoint else ""
        super().__init__(f"stopped by {signal_name}{where}")
