"""Atomic, deterministic file writing: a stage either writes a complete output or none at all.

Also what every reader and writer of the project's files shares: UTF-8 checks that name the file, row and field
(`read_jsonl`, `foreign_encoding`) and owner-only permissions for files holding posts (`owner_only`).
"""
from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]
# Byte-order marks of encodings that are not UTF-8 (UTF-32 first: its little-endian mark starts with UTF-16's).
FOREIGN_BOMS = [(codecs.BOM_UTF32_LE, "UTF-32-LE"), (codecs.BOM_UTF32_BE, "UTF-32-BE"),
                (codecs.BOM_UTF16_LE, "UTF-16-LE"), (codecs.BOM_UTF16_BE, "UTF-16-BE")]
OWNER_ONLY_UMASK = 0o077  # files 0600, folders 0700


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A temporary path for `path`, inside a temporary folder beside it (the same directory, so the final rename
    is atomic); the folder is removed on the way out, whatever happened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp / path.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    Works for files and directories. The temporary lives in the same directory so the final rename is atomic.
    """
    path = Path(path)
    with _staged(path) as target:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)


@contextlib.contextmanager
def atomic_paths(*paths: PathLike) -> Iterator[list[Path]]:
    """`atomic_path` for outputs that must agree with each other (a table and its counts).

    Everything is written to temporaries first; only then are ALL the old outputs removed, and the new ones
    renamed in. A kill part-way through publishing leaves some outputs missing (the stage reruns), never a new
    one beside an old one.
    """
    targets = [Path(p) for p in paths]
    with contextlib.ExitStack() as stack:
        staged = [stack.enter_context(_staged(p)) for p in targets]
        yield staged
        for path in targets:
            _remove(path)
        for tmp, path in zip(staged, targets):
            os.replace(tmp, path)


def write_text(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: PathLike, data) -> None:
    """Deterministic JSON (sorted keys, fixed indent, trailing newline) so DVC hashes are stable."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


# ------------------------------------------------------------------------------------------------ reading
def foreign_encoding(raw: bytes) -> Optional[str]:
    """The name of a non-UTF-8 text encoding `raw` is evidently in (UTF-16 / UTF-32, with or without a byte-order
    mark), else None. Without a mark: text of mostly ASCII characters in UTF-16 is half NUL bytes."""
    for bom, name in FOREIGN_BOMS:
        if raw.startswith(bom):
            return f"{name} (byte-order mark {bom.hex(' ')})"
    head = raw[:4096]
    if len(head) >= 4 and head.count(0) * 4 >= len(head):
        width = "32" if head.count(0) * 4 >= len(head) * 3 else "16"
        endian = "LE" if head[1::2].count(0) >= head[0::2].count(0) else "BE"
        return f"UTF-{width}-{endian} without a byte-order mark ({head.count(0)} of its first {len(head)} bytes " \
               "are NUL)"
    return None


def _not_utf8(line: bytes, err: UnicodeDecodeError, path: PathLike, row: int):
    """The error for a JSONL line that is not UTF-8, naming the field whose value holds the bad bytes."""
    from .errors import HatetuneError

    field = None
    with contextlib.suppress(json.JSONDecodeError):
        record = json.loads(line.decode("utf-8", errors="surrogateescape"))
        if isinstance(record, dict):  # undecodable bytes became lone surrogates in the value that holds them
            field = next((key for key, value in record.items()
                          if isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value)), None)
    return HatetuneError(f"not valid UTF-8 (bytes {err.object[err.start:err.end]!r}); re-save the file as UTF-8",
                         file=str(path), row=row, field=field)


def read_jsonl(path: PathLike) -> list[dict]:
    """One JSON object per line (blank lines skipped). Anything else (invalid JSON, an array, a number, `null`,
    bytes that are not UTF-8, a UTF-16 file) fails with the file and the row (1-based line)."""
    from .errors import HatetuneError

    raw = Path(path).read_bytes()
    encoding = foreign_encoding(raw)
    if encoding:
        raise HatetuneError(f"the file is {encoding}, not UTF-8: re-save it as UTF-8", file=str(path), row=1)
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    rows = []
    for i, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _not_utf8(line, err, path, i) from None
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise HatetuneError(f"invalid JSON ({err.msg})", file=str(path), row=i) from None
        if not isinstance(record, dict):
            kind = "null" if record is None else {list: "an array", str: "a string", bool: "a boolean"}.get(
                type(record), "a number")
            raise HatetuneError(f"expected a JSON object ({{...}}) on every line, got {kind}", file=str(path),
                                row=i)
        rows.append(record)
    return rows


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- permissions
def owner_only(folders: Iterable[PathLike] = ()) -> None:
    """From now on this process creates files and folders for their owner only (umask 077: files 0600, folders
    0700), and those of `folders` that exist (data/, models/, the DVC cache) are closed to other users.

    They hold hate speech, annotator ids and models trained on them (`privacy.owner_only`, default true).
    """
    os.umask(OWNER_ONLY_UMASK)
    for folder in map(Path, folders):
        if folder.is_dir() and folder.stat().st_mode & 0o077:
            folder.chmod(0o700)
