"""One error hierarchy for the whole package.

Every edge converts these: the CLI prints one line and exits 2, HTTP layers answer 4xx.
"""

from __future__ import annotations


class DistillguardError(Exception):
    """Base class of every error distillguard raises on purpose."""

    exit_code = 2


class BadInputError(DistillguardError):
    """Input that cannot be used: names the file, the line and the field when known."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.field = field
        super().__init__(self.describe())

    def describe(self) -> str:
        where = []
        if self.source is not None:
            where.append(str(self.source) + (f":{self.line}" if self.line is not None else ""))
        if self.field is not None:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class FieldError(ValueError):
    """Raised while validating one record; the reader adds file and line."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"field '{field}': {message}")


class UsageError(DistillguardError):
    """A command was called with options that do not fit together."""


def load_json_file(path, what: str):
    """Parse a whole JSON file, turning every way it can fail into one clear BadInputError."""
    from pathlib import Path

    import orjson

    source = str(path)
    try:
        return orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise BadInputError(f"no such {what}", source=source) from None
    except IsADirectoryError:
        raise BadInputError(f"is a directory, expected a {what}", source=source) from None
    except PermissionError:
        raise BadInputError("permission denied", source=source) from None
    except orjson.JSONDecodeError as exc:
        raise BadInputError(f"{what} is not JSON ({exc})", source=source) from None
