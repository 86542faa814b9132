"""One user-facing error type. Stages print it on one line and exit non-zero.

Every message a user sees for bad input names where the problem is: the file, the row (1-based, as a
spreadsheet or `sed -n` shows it, header = row 1) and the field or config key.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, Optional


class HatetuneError(Exception):
    """A problem with the user's input, data or configuration (not a bug in hatetune)."""

    def __init__(self, message: str, *, file: Optional[str] = None, row: Optional[int] = None,
                 field: Optional[str] = None):
        self.message, self.file, self.row, self.field = message, file, row, field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return (", ".join(where) + ": " if where else "") + self.message


class ConfigError(HatetuneError):
    """A config value that fails validation; `field` is the dotted key (e.g. lora.r)."""

    def __str__(self) -> str:
        return f"config error: {self.field}: {self.message}" if self.field else f"config error: {self.message}"


def exit_on_error(main: Callable) -> Callable:
    """Decorator for stage entry points: a HatetuneError becomes one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except HatetuneError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
