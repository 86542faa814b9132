"""Reading upstream data files (CSV, TSV, parquet) into records that remember their file and row.

Every record carries `_file` and `_row` (1-based, header = row 1, as a spreadsheet or `sed -n` shows it), so every
complaint about the data, here or in `hatetune.labels`, names the file, the row and the column. A file that is not
UTF-8 text (UTF-16, UTF-32, stray bytes), a header naming a column twice, or a cell too large to be a post fails
here with one such line.
"""
from __future__ import annotations

import codecs
import csv
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import HatetuneError
from .io import foreign_encoding

FILE, ROW = "_file", "_row"  # where each record came from
# The largest cell accepted: posts are far smaller, but a whole valid 1 MB text must pass (the csv module's own
# default, 128 KiB, does not); anything larger is an unclosed quote swallowing the lines after it.
CELL_LIMIT = 16 * 1024 * 1024
_NOT_UTF8 = re.compile("[\udc80-\udcff]+")  # what undecodable bytes become under surrogateescape


def fail(records: pd.DataFrame, position: int, column: str, message: str):
    """Raise the error for the record at `position` (0-based), naming its file, row and `column`."""
    raise HatetuneError(message, file=records[FILE].iat[position], row=int(records[ROW].iat[position]),
                        field=column)


def read_records(path: str | Path) -> pd.DataFrame:
    """One data file as a DataFrame of its columns plus `_file` and `_row` (header = row 1)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise HatetuneError("the file is empty (expected a header row)", file=str(path), row=1)
    if path.suffix.lower() == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises many types
            raise HatetuneError(f"not a readable parquet file ({err.__class__.__name__}: {err})",
                                file=str(path)) from None
        _check_header(list(frame.columns), path)
        rows = np.arange(2, len(frame) + 2)  # as a spreadsheet shows it: header = row 1
    else:
        frame, rows = _read_delimited(path, "\t" if path.suffix.lower() == ".tsv" else ",")
    if frame.empty:
        raise HatetuneError("the file has a header but no data rows", file=str(path), row=2)
    frame[FILE] = str(path)
    frame[ROW] = rows
    return frame


def _check_header(header: Sequence[str], path: Path) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(header, start=1):
        if name in seen:
            raise HatetuneError(f"the header names column {name!r} twice (columns {seen[name]} and {i}): rename "
                                "one", file=str(path), row=1, field=name)
        seen[name] = i


def _read_delimited(path: Path, delimiter: str) -> tuple[pd.DataFrame, list[int]]:
    """A CSV read with the csv module: exact line numbers (quoted fields may span lines), every cell a string
    (no NA guessing: a post reading "NA" stays "NA"), and undecodable bytes located to a row and column."""
    raw = path.read_bytes()
    encoding = foreign_encoding(raw)
    if encoding:
        raise HatetuneError(f"the file is {encoding}, not UTF-8: re-save it as UTF-8", file=str(path), row=1)
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    if not raw.strip():
        raise HatetuneError("the file is empty (expected a header row)", file=str(path), row=1)
    try:
        text, valid_utf8 = raw.decode("utf-8"), True
    except UnicodeDecodeError:
        text, valid_utf8 = raw.decode("utf-8", errors="surrogateescape"), False
    csv.field_size_limit(max(csv.field_size_limit(), 2 ** 31 - 1))  # cells are checked against CELL_LIMIT below
    # split on "\n" only, so line numbers agree with `sed -n` and editors
    reader = csv.reader((line + "\n" for line in text.split("\n")), delimiter=delimiter)
    records, lines = [], []
    try:
        header = next(reader)
        _check_header(header, path)
        start = reader.line_num + 1
        for fields in reader:
            if fields:  # a blank line holds no record
                if len(fields) != len(header):
                    raise HatetuneError(f"has {len(fields)} fields but the header has {len(header)}",
                                        file=str(path), row=start)
                for name, value in zip(header, fields):
                    if len(value) > CELL_LIMIT:
                        raise HatetuneError(f"a cell of {len(value):,} characters, more than the {CELL_LIMIT:,} "
                                            "a post can have (an unclosed quote?)", file=str(path), row=start,
                                            field=name)
                records.append(fields)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as err:
        raise HatetuneError(f"malformed CSV ({err})", file=str(path), row=reader.line_num) from None
    if not valid_utf8:
        for line, fields in [(1, header)] + list(zip(lines, records)):
            for name, value in zip(header, fields):
                bad = _NOT_UTF8.search(value)
                if bad:
                    raw_bytes = bad.group().encode("utf-8", errors="surrogateescape")
                    raise HatetuneError(f"not valid UTF-8 (bytes {raw_bytes!r}); re-save the file as UTF-8",
                                        file=str(path), row=line, field=name)
    return pd.DataFrame(records, columns=header, dtype=object), lines


def read_raw_dir(raw_dir: str | Path, required: Sequence[str]) -> pd.DataFrame:
    """All data files of a download (in manifest order), each checked for the `required` columns."""
    from .sources import read_manifest

    raw_dir = Path(raw_dir)
    files = [raw_dir / entry["path"] for entry in read_manifest(raw_dir)["files"]]
    if not files:
        raise HatetuneError("the download manifest lists no data files", file=str(raw_dir / "manifest.json"))
    frames = []
    for path in files:
        frame = read_records(path)
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise HatetuneError(f"missing required column(s) {', '.join(missing)} (has: "
                                f"{', '.join(c for c in frame.columns if c not in (FILE, ROW))})",
                                file=str(path), row=1, field=missing[0])
        frames.append(frame[list(dict.fromkeys([*required, FILE, ROW]))])
    return pd.concat(frames, ignore_index=True)
