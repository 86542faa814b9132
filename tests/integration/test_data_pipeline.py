"""The data stages under real DVC: `dvc repro convert`, `dvc exp run -S task=mhs`, `dvc metrics show`.

Each test runs in a fresh git repo holding a copy of the project, against a mirror folder generated in the
upstream schemas (or the real ../shared/mirror, when present).
"""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from integration.conftest import ran_stages, run  # tests/ is on sys.path; `conftest` is whichever pytest loaded
from support import mirror_dir
from upstream_fixtures import dynahate_rows, write_dynahate, write_mhs

SPLITS = ("train", "dev", "test")


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_repro_convert_on_a_dynahate_mirror_then_nothing_to_do(project_repo, tmp_path):
    write_dynahate(tmp_path / "mirror" / "dynahate" / "dynahate_v0.2.2_dev.csv", n_single=60, n_pairs=30)
    env = {"HATETUNE_MIRROR": str(tmp_path / "mirror")}
    run(["dvc", "repro", "convert"], project_repo, env=env)

    for split in SPLITS:
        rows = jsonl_rows(project_repo / "data/processed/dynahate" / f"{split}.jsonl")
        assert rows and all(set(r) == {"instruction", "input", "output", "system", "id", "target", "type", "level",
                                       "round"} for r in rows)
    metrics = json.loads((project_repo / "metrics/data.json").read_text())
    assert metrics["split_strategy"] == "grouped" and metrics["rows"]["total"] == 120
    assert "re-split" in metrics["warnings"][0]
    first = (project_repo / "data/processed/dynahate/train.jsonl").read_bytes()
    # posts are owner-only, in the workspace and in DVC's cache of them (privacy.owner_only)
    for rel in ("data", "models", ".dvc/cache"):
        assert stat.S_IMODE((project_repo / rel).stat().st_mode) == 0o700, rel
    assert stat.S_IMODE((project_repo / "data/interim/dynahate/labels.csv").stat().st_mode) == 0o600

    again = run(["dvc", "repro", "convert"], project_repo, env=env)
    assert ran_stages(again.stdout) == ["sources"], again.stdout  # it always checks; nothing else reruns
    status = run(["dvc", "status", "--with-deps", "convert"], project_repo, env=env).stdout
    assert status == "sources:\n\talways changed\n", status  # every other stage up to date
    assert (project_repo / "data/processed/dynahate/train.jsonl").read_bytes() == first

    shown = run(["dvc", "metrics", "show", "--json"], project_repo).stdout
    data = json.loads(shown)
    assert any("metrics/data.json" in files.get("data", {}) for files in data.values()), shown
    table = run(["dvc", "metrics", "show"], project_repo).stdout
    assert "metrics/data.json" in table and "rows.train" in table


def test_switching_or_editing_the_mirror_reruns_what_it_feeds(project_repo, tmp_path):
    """$HATETUNE_MIRROR is invisible to DVC; the sources stage records what it resolves, so a change there
    reruns download and what follows, and turning the mirror off shows up as changed sources."""
    csv_file = tmp_path / "mirror" / "dynahate" / "dynahate_v0.2.2_dev.csv"
    write_dynahate(csv_file, n_single=60, n_pairs=30)
    env = {"HATETUNE_MIRROR": str(tmp_path / "mirror")}
    run(["dvc", "repro", "convert"], project_repo, env=env)
    write_dynahate(csv_file, n_single=61, n_pairs=30)  # the mirror's file changes
    again = run(["dvc", "repro", "convert"], project_repo, env=env)
    assert ran_stages(again.stdout) == ["sources", "download", "labels", "convert"], again.stdout
    assert json.loads((project_repo / "metrics/data.json").read_text())["rows"]["total"] == 121

    run(["dvc", "repro", "sources"], project_repo, env={"HATETUNE_MIRROR": ""})  # "" unsets it
    resolved = json.loads((project_repo / "data/raw/dynahate.source.json").read_text())
    assert resolved["kind"] == "https" and resolved["url"].startswith("https://")
    base = json.loads((project_repo / "models/base/smollm2_135m_instruct.source.json").read_text())
    assert base["kind"] == "hub" and len(base["revision"]) == 40  # a pinned commit: resolved offline
    status = run(["dvc", "status", "download", "base_model"], project_repo).stdout
    assert "download:" in status and "base_model:" in status and "modified:" in status, status


def test_exp_run_task_mhs_against_an_mhs_mirror(project_repo, tmp_path):
    write_mhs(tmp_path / "mirror" / "measuring-hate-speech" / "data" / "train-00000-of-00001.parquet",
              n_comments=60)
    env = {"HATETUNE_MIRROR": str(tmp_path / "mirror")}
    run(["dvc", "exp", "run", "-S", "task=mhs", "convert"], project_repo, env=env)

    canonical = (project_repo / "data/interim/mhs/labels.csv").read_text(encoding="utf-8")
    # `target`: the breakdown column (task.breakdowns), the identities at least half of a comment's annotators ticked
    assert canonical.splitlines()[0] == "id,text,label,split,group,target" and len(canonical.splitlines()) == 61
    outputs = {r["output"] for s in SPLITS for r in jsonl_rows(project_repo / "data/processed/mhs" / f"{s}.jsonl")}
    assert outputs == {"Hate", "Neutral", "Supportive"}
    metrics = json.loads((project_repo / "metrics/data.json").read_text())
    assert metrics["task"] == "mhs" and metrics["scores_aggregated"] is False
    manifest = json.loads((project_repo / "data/raw/mhs/manifest.json").read_text())
    assert manifest["kind"] == "hub" and manifest["mirror"] is True


def test_bad_input_fails_the_pipeline_with_one_line(project_repo, tmp_path):
    rows = dynahate_rows()
    rows[5]["text"] = "  "
    write_dynahate(tmp_path / "mirror" / "dynahate" / "dev.csv", rows)
    proc = run(["dvc", "repro", "convert"], project_repo, check=False, env={"HATETUNE_MIRROR": str(tmp_path / "mirror")})
    assert proc.returncode != 0
    assert ("error: data/raw/dynahate/dev.csv, row 7, field 'text': text is empty or whitespace only"
            in proc.stderr + proc.stdout)
    assert not (project_repo / "data/interim/dynahate").exists()
    assert not (project_repo / "data/processed/dynahate").exists()


def test_data_stages_on_the_real_mirror(project_repo):
    mirror = mirror_dir()
    if mirror is None or not (mirror / "dynahate").is_dir():
        pytest.skip("the offline mirror (../shared/mirror or $HATETUNE_MIRROR) with dynahate/ is not here")
    run(["dvc", "repro", "convert"], project_repo, env={"HATETUNE_MIRROR": str(mirror)})
    for split in SPLITS:
        assert jsonl_rows(project_repo / "data/processed/dynahate" / f"{split}.jsonl"), split
    metrics = json.loads((project_repo / "metrics/data.json").read_text())
    assert metrics["rows"]["total"] == 4125  # the dev split of v0.2.2, re-split
    assert sum(metrics["labels"]["train"].values()) == metrics["rows"]["train"]
