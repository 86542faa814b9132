"""hatetune.io: atomic outputs (alone and in agreeing pairs), the one JSONL reader, encodings, owner-only files."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from hatetune import io
from hatetune.errors import HatetuneError

ROW = json.dumps({"instruction": "i", "input": "a post", "output": "hate"})


# ---------------------------------------------------------------------------------------- atomic writes
def publish_pair(tmp_path, text: str, fail_at: int | None = None, monkeypatch=None) -> None:
    """Write folder/table.csv and counts.json together; with `fail_at`, the n-th rename is killed."""
    if fail_at is not None:
        real, published = os.replace, []

        def replace(src, dst):
            if Path(dst) in (tmp_path / "folder", tmp_path / "counts.json"):
                published.append(dst)
                if len(published) == fail_at:
                    raise KeyboardInterrupt  # a kill before the first, or between the two, publishing renames
            real(src, dst)

        monkeypatch.setattr(io.os, "replace", replace)
    with io.atomic_paths(tmp_path / "folder", tmp_path / "counts.json") as (folder, counts):
        folder.mkdir()
        (folder / "table.csv").write_text(text)
        io.write_json(counts, {"text": text})


@pytest.mark.parametrize("fail_at", [1, 2])
def test_atomic_paths_never_leave_a_new_output_beside_an_old_one(tmp_path, monkeypatch, fail_at):
    publish_pair(tmp_path, "old")
    with pytest.raises(KeyboardInterrupt):
        publish_pair(tmp_path, "new", fail_at, monkeypatch)
    table, counts = tmp_path / "folder" / "table.csv", tmp_path / "counts.json"
    present = [p.exists() for p in (table, counts)]
    assert present != [True, True] or json.loads(counts.read_text())["text"] == table.read_text()
    assert not table.exists() or table.read_text() == "new"  # the old pair went before the new one came
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_paths_publish_both_and_leave_nothing_on_error(tmp_path):
    publish_pair(tmp_path, "old")
    publish_pair(tmp_path, "new")
    assert (tmp_path / "folder" / "table.csv").read_text() == "new"
    assert json.loads((tmp_path / "counts.json").read_text()) == {"text": "new"}
    with pytest.raises(RuntimeError):
        with io.atomic_paths(tmp_path / "folder", tmp_path / "counts.json") as (folder, counts):
            folder.mkdir()
            raise RuntimeError("the stage failed while writing")
    assert (tmp_path / "folder" / "table.csv").read_text() == "new"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts.json", "folder"]


# ------------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("content, where, message", [
    (f"{ROW}\n[1, 2]\n", "row 2", "expected a JSON object ({...}) on every line, got an array"),
    (f"{ROW}\nnull\n", "row 2", "got null"),
    ("42\n", "row 1", "got a number"),
    ('"a post"\n', "row 1", "got a string"),
    (f"{ROW}\n{{broken\n", "row 2", "invalid JSON"),
    (f"{ROW}\n".encode() + ROW.replace("a post", "a p\udcfeost").encode("utf-8", "surrogateescape") + b"\n",
     "row 2, field 'input'", "not valid UTF-8 (bytes b'\\xfe')"),
    (b'{"input": "x\xff\n', "row 1", "not valid UTF-8"),  # not even JSON: no field to name
    (f"{ROW}\n".encode("utf-16"), "row 1", "the file is UTF-16-LE (byte-order mark ff fe), not UTF-8"),
    (f"{ROW}\n{ROW}\n".encode("utf-16-be"), "row 1", "UTF-16-BE without a byte-order mark"),
])
def test_read_jsonl_one_error_naming_file_row_and_field(tmp_path, content, where, message):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(HatetuneError) as err:
        io.read_jsonl(path)
    assert str(err.value).startswith(f"{path}, {where}: ") and message in str(err.value), str(err.value)


def test_read_jsonl_accepts_a_utf8_bom_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + f"{ROW}\r\n\r\n{ROW}\n".encode())
    assert io.read_jsonl(path) == [json.loads(ROW)] * 2


@pytest.mark.parametrize("encoding, expected", [("utf-16", "UTF-16-LE (byte-order mark ff fe)"),
                                                ("utf-16-le", "UTF-16-LE without a byte-order mark"),
                                                ("utf-32", "UTF-32-LE (byte-order mark ff fe 00 00)"),
                                                ("utf-32-be", "UTF-32-BE without a byte-order mark"),
                                                ("utf-8", None), ("utf-8-sig", None)])
def test_foreign_encoding_names_utf16_and_utf32(encoding, expected):
    found = io.foreign_encoding("id,text\n1,a post\n".encode(encoding) * 20)
    assert found == expected or (expected and found.startswith(expected))


def test_a_nul_byte_in_utf8_text_is_not_taken_for_utf16():
    assert io.foreign_encoding(b"id,text\n" + b"1,a post\n" * 40 + b"2,a\x00b\n") is None


# --------------------------------------------------------------------------------------- permissions
def test_owner_only_sets_the_umask_and_closes_existing_folders(tmp_path):
    open_dir, missing = tmp_path / "data", tmp_path / "models"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    io.owner_only([open_dir, missing])
    assert stat.S_IMODE(open_dir.stat().st_mode) == 0o700 and not missing.exists()
    io.write_text(tmp_path / "data" / "x.txt", "post")
    (tmp_path / "sub").mkdir()
    assert stat.S_IMODE((tmp_path / "data" / "x.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "sub").stat().st_mode) == 0o700
