"""Errors that are part of the interface: each names the file, the field and the fix.

`sft.cli` turns any `SftError` into one line on stderr and exit code 2.
"""


class SftError(Exception):
    """A user-facing error: one line, no traceback (unless --debug)."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None, fix: str | None = None):
        self.message = message
        self.file = file
        self.field = field
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ": ".join(str(p) for p in (self.file, self.field) if p)
        text = f"{where}: {self.message}" if where else self.message
        if self.fix:
            text += f" (fix: {self.fix})"
        return " ".join(text.split("\n"))


class RecipeError(SftError):
    """The recipe file or a command-line override is wrong."""


class DataError(SftError):
    """A data source cannot be read or converted."""


class ModelError(SftError):
    """The model, tokenizer, LoRA or quantisation settings cannot be satisfied."""


class TrainError(SftError):
    """Training cannot start or had to stop (e.g. a non-finite loss)."""


class EvalError(SftError):
    """Evaluation cannot run (empty split, unknown metric, metric offline)."""


class PublishError(SftError):
    """Pushing, merging or writing a model card failed."""


class ServeError(SftError):
    """A model cannot be served or exported as asked (engine missing, port taken, not a model folder)."""
