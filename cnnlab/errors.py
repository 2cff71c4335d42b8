"""Errors a user can fix. The entrypoint prints them as one clear message (no traceback) and exits 2."""

from __future__ import annotations


class UserError(ValueError):
    """Something the user asked for or supplied is wrong; the message says what and how to fix it."""


class ConfigError(UserError):
    """A config value is not allowed: names the key, the value, what is allowed and the override to fix it."""

    def __init__(self, key: str, value: object, allowed: str, fix: str | None = None) -> None:
        """`fix`: the override that fixes it; None: `key=<value>`; "": no override is close enough to suggest."""
        self.key, self.value, self.allowed, self.fix = key, value, allowed, fix
        shown = "null" if value is None else repr(value)  # as the command line writes it
        how = "" if fix == "" else f" Fix it with the override `{fix or f'{key}=<value>'}`."
        super().__init__(f"{key}={shown} is not allowed: {allowed}.{how}")

    def __reduce__(self) -> tuple:
        # picklable, so a joblib or submitit worker can send the failure back to the sweep
        return type(self), (self.key, self.value, self.allowed, self.fix)


class DataError(UserError):
    """Dataset files are missing, unreadable or corrupt."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, unsafe, or does not fit the model."""


class BadArgument(ValueError):
    """A library function's argument is out of range. Library code knows nothing of config keys: the config
    boundary (cnnlab.tasks.build) says it as a ConfigError about the key the value came from."""

    def __init__(self, name: str, value: object, allowed: str, suggestion: object = None) -> None:
        self.name, self.value, self.allowed, self.suggestion = name, value, allowed, suggestion
        super().__init__(f"{name}={value!r} is not allowed: {allowed}")

    def __reduce__(self) -> tuple:
        return type(self), (self.name, self.value, self.allowed, self.suggestion)


class Refused(BaseException):
    """A UserError found by a Hydra callback before anything is written (the Preflight). Hydra's callback runner
    turns an Exception into a warning and goes on, so the error travels as a BaseException; the CLI prints it in
    one line (exit 2) and the Python API raises `error`."""

    def __init__(self, error: UserError) -> None:
        super().__init__(str(error))
        self.error = error
