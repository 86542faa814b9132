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


class UndeclaredParamError(HatetuneError):
    """A stage read a params key that its dvc.yaml entry does not declare (see config.stage_view)."""

    def __init__(self, key: str):
        super().__init__(f"this stage reads the params key '{key}', which its dvc.yaml entry does not declare, so "
                         f"DVC would not rerun it when the key changes: add `{key}` to the stage's params")


def exit_on_error(main: Callable) -> Callable:
    """Decorator for stage entry points: a HatetuneError becomes one line on stderr and exit code 2.

    A read of an undeclared params key (OmegaConf's "not in struct" on a stage's view) becomes one too.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        from omegaconf.errors import ConfigAttributeError, ConfigKeyError

        try:
            return main(*args, **kwargs)
        except (ConfigAttributeError, ConfigKeyError) as err:
            if "not in struct" not in str(err) or not getattr(err, "full_key", None):
                raise
            print(f"error: {UndeclaredParamError(err.full_key)}", file=sys.stderr)
            sys.exit(2)
        except HatetuneError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
