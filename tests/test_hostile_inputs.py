"""Hostile inputs to the data stages and the config, through the real stage scripts (`python -m stages.X`), each
from the state of one good run: exit 2 with ONE `error:` line naming the file, row and field (or the config key),
the earlier outputs byte-identical, no temporary file left (issue 12). Library-level checks of the same inputs are
in test_labels.py, test_sources.py, test_config.py and test_io.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hostile import assert_one_error, copy_project, outputs, stage, succeed, temporaries
from upstream_fixtures import dynahate_rows, mhs_rows, write_dynahate, write_mhs

MIRROR_CSV = Path("dynahate") / "dynahate_v0.2.2_dev.csv"
MHS_PARQUET = Path("measuring-hate-speech") / "data" / "train.parquet"
RAW = ("data/raw/",)  # download copies whatever the mirror holds: the stage that judges it is labels
DIGITS = "1" * 10 + "e" + "1" * 53  # an all-digit sha256 but one 'e': YAML reads it as a float (inf)


def good_rows() -> list[dict]:
    return dynahate_rows(n_single=60, n_pairs=30)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """The project after one good run of sources, download, labels and convert on a DynaHate mirror."""
    base = tmp_path_factory.mktemp("good")
    project, mirror = copy_project(base / "project"), base / "mirror"
    write_dynahate(mirror / MIRROR_CSV, good_rows())
    write_mhs(mirror / MHS_PARQUET, mhs_rows(n_comments=40))
    for name in ("sources", "download", "labels", "convert"):
        succeed(project, name, env={"HATETUNE_MIRROR": str(mirror)})
    return base


@pytest.fixture
def project(good_run, tmp_path):
    """A copy of the good run (project and mirror) that a test may spoil."""
    shutil.copytree(good_run, tmp_path / "run", symlinks=True)
    return tmp_path / "run" / "project"


def edit_rows(change):
    def write(path: Path) -> None:
        rows = good_rows()
        change(rows)
        write_dynahate(path, rows)
    return write


def utf16(bom: bool):
    def write(path: Path) -> None:
        write_dynahate(path, good_rows())
        path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16" if bom else "utf-16-le"))
    return write


def duplicate_header(path: Path) -> None:
    write_dynahate(path, good_rows())
    header, rest = path.read_text(encoding="utf-8").split("\n", 1)
    path.write_text(header.replace("level", "text") + "\n" + rest, encoding="utf-8")


def mhs_two_texts(path: Path) -> None:
    rows = mhs_rows(n_comments=40)
    rows[7]["text"] = "a different post under the same id"  # comment 20002's second annotation (parquet row 9)
    write_mhs(path, rows)


# (mirror file to spoil, how, stage overrides, the error's fragments)
DATA_CASES = {
    "nul-byte": (MIRROR_CSV, edit_rows(lambda r: r[4].update(text="abc\x00def")), [],
                 ["dynahate_v0.2.2_dev.csv, row 6, field 'text'", "NUL byte"]),
    "duplicate-header": (MIRROR_CSV, duplicate_header, [],
                         ["dynahate_v0.2.2_dev.csv, row 1, field 'text'", "twice"]),
    "utf16-with-bom": (MIRROR_CSV, utf16(bom=True), [], ["dynahate_v0.2.2_dev.csv, row 1", "UTF-16-LE"]),
    "utf16-without-bom": (MIRROR_CSV, utf16(bom=False), [],
                          ["dynahate_v0.2.2_dev.csv, row 1", "UTF-16-LE without a byte-order mark"]),
    "one-class": (MIRROR_CSV, edit_rows(lambda rows: [r.update(label="hate") for r in rows]), [],
                  ["split 'train' has no row labelled 'not hate'"]),
    "three-rows": (MIRROR_CSV, edit_rows(lambda rows: rows.__delitem__(slice(3, None))), [],
                   ["field 'task.split.fractions.dev'", "split 'dev' is empty"]),
    "mhs-one-id-two-texts": (MHS_PARQUET, mhs_two_texts, ["task=mhs"],
                             ["train.parquet, row 9, field 'text'", "comment_id 20002", "row 8"]),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_fails_in_labels_with_one_line_and_keeps_the_good_outputs(project, case):
    target, spoil, overrides, fragments = DATA_CASES[case]
    mirror = project.parent / "mirror"
    spoil(mirror / target)
    before = outputs(project, skip=RAW)
    env = {"HATETUNE_MIRROR": str(mirror)}
    succeed(project, "download", *overrides, env=env)  # download copies; it does not judge the content
    assert_one_error(stage(project, "labels", *overrides, env=env), *fragments)
    assert outputs(project, skip=RAW) == before
    assert temporaries(project) == []


PIN = "task.source.sha256=" + "a" * 64
CONFIG_CASES = {
    # integrity: the pin is checked against the file actually used (the mirror's holds another name) ...
    "pin-on-another-file": (["sources", "download"], [PIN],
                            ["mirror/dynahate/dynahate_v0.2.2_dev.csv", "field 'task.source.sha256'",
                             "checksum mismatch", "the pin is for dynahate_v0.2.3.csv"]),
    # ... its format is checked, and an all-digit one given as an override stays the text it was
    "pin-not-hex": (["sources"], ["task.source.sha256=xyz"], ["task.source.sha256", "not a sha256"]),
    "pin-all-digits": (["sources", "download"], ["task.source.sha256=" + DIGITS],
                       ["checksum mismatch", f"expected sha256 {DIGITS}"]),
    "seed-negative": (["labels"], ["seed=-1"], ["config error: seed: must be in [0, 2^32), got -1"]),
    "lr-nan": (["labels"], ["train.lr=nan"], ["config error: train.lr: must be a finite number"]),
    "lr-inf": (["labels"], ["train.lr=inf"], ["config error: train.lr: must be a finite number"]),
    "pue-nan": (["labels"], ["carbon.pue=nan"], ["config error: carbon.pue: must be a finite number"]),
    "train-fraction-zero": (["labels"], ["task.split.fractions={train: 0.0, dev: 0.5, test: 0.5}"],
                            ["config error: task.split.fractions.train: must be > 0"]),
    "params-not-yaml": (["labels"], ["--params", "bad.yaml"], ["bad.yaml, row 3: not valid YAML"]),
    "params-not-a-mapping": (["labels"], ["--params", "list.yaml"], ["list.yaml, row 1: expected a mapping"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_fails_with_one_line_naming_the_key_and_keeps_the_good_outputs(project, case):
    stages, args, fragments = CONFIG_CASES[case]
    (project / "bad.yaml").write_text("seed: 42\ntask:\n  name: [dynahate\n")
    (project / "list.yaml").write_text("- seed\n- task\n")
    before = outputs(project)
    env = {"HATETUNE_MIRROR": str(project.parent / "mirror")}
    for name in stages:  # each stage that could use the value refuses it
        assert_one_error(stage(project, name, *args, env=env), *fragments)
    assert outputs(project) == before
    assert temporaries(project) == []


def test_a_one_megabyte_post_is_read_whole(project):
    mirror = project.parent / "mirror"
    big = "a long post " * 90_000  # 1.08 MB: over the csv module's default field limit (128 KiB)
    edit_rows(lambda rows: rows[4].update(text=big))(mirror / MIRROR_CSV)
    env = {"HATETUNE_MIRROR": str(mirror)}
    succeed(project, "download", env=env)
    manifest = json.loads((project / "data/raw/dynahate/manifest.json").read_text())
    assert manifest["files"][0]["rows"] == 120  # counted, not given up on
    succeed(project, "labels", env=env)
    succeed(project, "convert", "data.max_examples.train=null", "data.max_examples.dev=null",
            "data.max_examples.test=null", env=env)
    texts = [json.loads(line)["input"] for split in ("train", "dev", "test")
             for line in (project / f"data/processed/dynahate/{split}.jsonl").read_text().splitlines()]
    assert big in texts


def test_a_pin_that_matches_the_file_used_is_verified_in_both_stages(project):
    mirror = project.parent / "mirror"
    pinned = json.loads((project / "data/raw/dynahate.source.json").read_text())["files"][0]["sha256"]
    env = {"HATETUNE_MIRROR": str(mirror)}
    succeed(project, "sources", f"task.source.sha256={pinned.upper()}", env=env)
    succeed(project, "download", f"task.source.sha256={pinned.upper()}", env=env)
    manifest = json.loads((project / "data/raw/dynahate/manifest.json").read_text())
    assert manifest["sha256_pinned"] == pinned and manifest["files"][0]["sha256_verified"] is True


def test_data_and_outputs_are_owner_only_by_default_and_follow_the_umask_when_off(project):
    for rel in ("data", "data/interim/dynahate", "data/processed/dynahate"):
        assert (project / rel).stat().st_mode & 0o777 == 0o700, rel
    for rel in ("data/interim/dynahate/labels.csv", "data/processed/dynahate/train.jsonl",
                "data/raw/dynahate/manifest.json", "metrics/data.json"):
        assert (project / rel).stat().st_mode & 0o777 == 0o600, rel
    (project / "data").chmod(0o755)  # loosened by hand: the next stage closes it again
    succeed(project, "convert", "data.max_examples.train=10", env={"HATETUNE_MIRROR": str(project.parent / "mirror")})
    assert (project / "data").stat().st_mode & 0o777 == 0o700

    (project / "data").chmod(0o755)
    succeed(project, "convert", "privacy.owner_only=false", env={"HATETUNE_MIRROR": str(project.parent / "mirror")})
    assert (project / "data").stat().st_mode & 0o777 == 0o755  # left as it is
    assert (project / "data/processed/dynahate/train.jsonl").stat().st_mode & 0o077 != 0  # the umask's (022)
