"""hatetune.corpora (the Stop-Hate posts table): reading MetaHate, DynaHate and the CONAN family in their upstream
schemas, deduplication, and the grouped split (no text, CONAN pair or dialogue in two splits), on generated
mirrors (no CONAN text is ever in the repository)."""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

from hatetune import config, corpora, labels, records, schema, sources
from hatetune.errors import HatetuneError
from hatetune.parsing import normalise_text
from upstream_fixtures import (CONAN_COLUMNS, conan_rows, metahate_rows, write_csv,
                               write_stophate_mirror)


@pytest.fixture(scope="module")
def task():
    return config.validate(config.compose(["task=stophate"])).task


def fetched(tmp_path: Path, task, mirror: Path) -> Path:
    raw = tmp_path / "raw"
    sources.fetch_many(sources.task_sources(task), raw, mirror=mirror)
    return raw


@pytest.fixture
def mirror(tmp_path):
    return write_stophate_mirror(tmp_path / "mirror")


@pytest.fixture
def unpinned(task):
    """The task with the CONAN and MetaHate files' sha256 unpinned: the generated files are not the upstream ones."""
    cfg = config.validate(config.compose(["task=stophate"] + [f"task.extra_sources.{k}.sha256=null"
                                                              for k in (*corpora.CONAN_FAMILY, "metahate")]))
    return cfg.task


def test_every_configured_corpus_has_a_reader(task):
    assert set(corpora.READERS) == set(schema.CORPUS_READERS)
    assert set(task.extra_sources) <= set(corpora.READERS)


def test_a_pinned_checksum_catches_a_file_that_is_not_upstreams(tmp_path, task, mirror):
    """Named as the extra source it is (the key to unpin), by the sources stage's check and by download's."""
    fields = sources.source_fields(task)
    assert fields["dynahate"] == "task.source" and fields["conan"] == "task.extra_sources.conan"
    for run in (lambda: sources.resolve_many(sources.task_sources(task), mirror, fields),
                lambda: sources.fetch_many(sources.task_sources(task), tmp_path / "raw", fields=fields, mirror=mirror)):
        with pytest.raises(HatetuneError, match="checksum mismatch") as err:
            run()
        assert err.value.field == "task.extra_sources.conan.sha256" and err.value.file.endswith("CONAN.csv")
    assert not (tmp_path / "raw").exists()


def test_posts_are_read_deduplicated_and_labelled(tmp_path, unpinned, mirror):
    rows = conan_rows()
    rows[3]["hateSpeech"] = " EN   CLAIM 0 about “group” "  # the same hate speech, other case / spaces / quotes
    write_csv(mirror / "conan" / "CONAN.csv", rows, CONAN_COLUMNS)
    write_csv(mirror / "metahate-sample" / "metahate_sample.tsv",
              metahate_rows() + [{"label": "1", "text": "Multitarget Claim 3 on topic 3"}], ["label", "text"],
              delimiter="\t")
    result = corpora.build_posts(unpinned, fetched(tmp_path, unpinned, mirror), seed=42)
    table = result.table
    keys = table["text"].map(normalise_text)
    assert keys.is_unique  # one post per normalised text
    assert not table["text"].str.startswith("FR ").any()  # CONAN: English rows only
    claim0 = table[keys == "en claim 0 about group"].iloc[0]
    assert claim0["source"] == "conan" and len(claim0["counter_narratives"]) == 2
    dup = table[keys == "multitarget claim 3 on topic 3"].iloc[0]
    assert dup["sources"] == ["multitarget_conan", "metahate"] and dup["source"] == "multitarget_conan"
    assert result.notes["duplicates_merged"] >= 3  # 2 CN rows of each CONAN HS + the re-spelled one + MetaHate's
    assert set(table["label"]) == {"hate", "not hate"}
    meta = table[table["source"] == "metahate"]
    assert set(meta["label"]) == {"hate", "not hate"}
    counts = collections.Counter(table["source"])
    assert counts["dialoconan"] == 16 and counts["kn_conan"] == 4  # 8 dialogues x 2 HS turns


def test_no_text_pair_or_dialogue_crosses_splits(tmp_path, unpinned, mirror):
    table = corpora.build_posts(unpinned, fetched(tmp_path, unpinned, mirror), seed=7).table
    assert set(table["split"]) == {"train", "dev", "test"}
    by_cn = collections.defaultdict(set)
    for post in table.itertuples():
        for cn in post.counter_narratives:
            by_cn[normalise_text(cn)].add(post.split)
    assert all(len(splits) == 1 for splits in by_cn.values())
    shared = [cn for cn in by_cn if cn.startswith("multitarget answer")]
    assert any(len(table[table["counter_narratives"].map(lambda c, k=k: any(normalise_text(x) == k for x in c))]) > 1
               for k in shared)  # the fixture does share counter-narratives
    dialogues = table[table["source"] == "dialoconan"]["id"].str.extract(r"dialoconan:(\d+)-")[0]
    assert (table[table["source"] == "dialoconan"].groupby(dialogues.to_numpy())["split"].nunique() == 1).all()
    assert (table.groupby("group")["split"].nunique() == 1).all()


def test_dynahate_posts_keep_the_dynahate_task_split(tmp_path, unpinned, mirror):
    """The judge (a DynaHate task adapter) never trained on a DynaHate test post judged here."""
    raw = fetched(tmp_path, unpinned, mirror)
    dynahate = config.validate(config.compose(["task=dynahate"])).task
    alone = labels.canonical_table(records.read_raw_dir(raw / "dynahate", labels.required_columns(dynahate)),
                                   dynahate, seed=42).table
    table = corpora.build_posts(unpinned, raw, seed=42).table
    ours = table[table["source"] == "dynahate"].set_index(table[table["source"] == "dynahate"]["id"].str[9:])
    assert ours["split"].to_dict() == alone.set_index("id")["split"].to_dict()


def test_dialoconan_history_pairs_earlier_turns(tmp_path, unpinned, mirror):
    table = corpora.build_posts(unpinned, fetched(tmp_path, unpinned, mirror), seed=42).table
    first = table[table["id"] == "dialoconan:3-0"].iloc[0]
    second = table[table["id"] == "dialoconan:3-2"].iloc[0]
    assert first["history"] == [] and first["counter_narratives"] == ["dialogue 3 turn 1 reply"]
    assert second["history"] == [["dialogue 3 turn 0 claim", "dialogue 3 turn 1 reply"]]


def test_irregular_dialogues_join_turns_of_one_kind():
    import pandas as pd

    rows = [("0", "0", "HS", "a"), ("0", "1", "CN", "b"), ("0", "2", "CN", "c"), ("0", "3", "HS", "d"),
            ("0", "4", "HS", "e")]
    records = pd.DataFrame(rows, columns=["dialogue_id", "turn_id", "type", "text"]).assign(_file="f", _row=range(2, 7))
    posts = {p["id"]: p for p in corpora.read_dialoconan(records, "dialoconan")}
    assert posts["dialoconan:0-3"]["history"] == [["a", "b\nc"]]
    assert posts["dialoconan:0-4"]["history"] == [["a", "b\nc"]]  # "d" has no answer: not history
    assert posts["dialoconan:0-4"]["counter_narratives"] == []


def test_weighted_split_keeps_row_fractions_with_a_giant_group():
    groups = ["giant"] * 300 + [f"g{i}" for i in range(700)]
    strata = ["conan|hate"] * 1000
    split = corpora.weighted_grouped_split(groups, strata, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=3)
    counts = collections.Counter(split)
    assert abs(counts["train"] - 800) <= 5 and abs(counts["dev"] - 100) <= 5 and abs(counts["test"] - 100) <= 5
    assert len(set(split[:300])) == 1
    again = corpora.weighted_grouped_split(groups, strata, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=3)
    assert np.array_equal(split, again)  # seeded


def test_a_bad_metahate_label_names_file_row_and_field(tmp_path, unpinned, mirror):
    rows = metahate_rows()
    rows[4]["label"] = "hateful"
    write_csv(mirror / "metahate-sample" / "metahate_sample.tsv", rows, ["label", "text"], delimiter="\t")
    with pytest.raises(HatetuneError, match=r"metahate_sample.tsv, row 6, field 'label': label 'hateful' is not 0 or 1"):
        corpora.build_posts(unpinned, fetched(tmp_path, unpinned, mirror), seed=42)


def test_posts_round_trip_and_data_metrics(tmp_path, unpinned, mirror):
    result = corpora.build_posts(unpinned, fetched(tmp_path, unpinned, mirror), seed=42)
    corpora.write_posts(result, tmp_path / "interim")
    back = corpora.read_posts(tmp_path / "interim" / "posts.jsonl")
    assert back["id"].tolist() == result.table["id"].tolist()
    assert back["history"].tolist() == result.table["history"].tolist()
    metrics = corpora.data_metrics(result, unpinned)
    assert metrics["rows"]["total"] == len(back) and sum(metrics["sources"]["conan"].values()) == 12
    assert metrics["groups"] == back["group"].nunique()
