"""hatetune.targets (the Stop-Hate convert stage): the three target modes, balanced sampling, the evaluation sets,
the judge's rows, and self-distilled replies filled into training rows (sft_data.fill_outputs)."""
from __future__ import annotations

import collections

import pandas as pd
import pytest

from hatetune import config, targets

STOP = "I cannot engage with this conversation."


def post(i, source, label, split="train", cns=(), history=()):
    return {"id": f"{source}:{i}", "text": f"post {i}", "label": label, "source": source, "sources": [source],
            "split": split, "group": f"g{i}", "counter_narratives": list(cns), "history": [list(h) for h in history]}


@pytest.fixture
def posts():
    rows = []
    for i in range(40):
        rows.append(post(i, "dynahate", "hate" if i % 3 == 0 else "not hate", split=["train", "test"][i % 2]))
    for i in range(40, 60):
        rows.append(post(i, "multitarget_conan", "hate", split=["train", "test"][i % 2],
                         cns=[f"answer {i}"] if i % 5 else []))
    rows.append(post(60, "dialoconan", "hate", cns=["reply b"], history=[("claim a", "reply a")]))
    rows.append(post(61, "metahate", "not hate", split="test"))
    return pd.DataFrame(rows)


def task_with(*overrides):
    return config.validate(config.compose(["task=stophate", *overrides])).task


def replies_for(rows):
    return {r["id"]: f"reply to {r['input']}" for r in rows}


@pytest.mark.parametrize("mode, expect", [
    ("stop_when_hateful", {("hate", "stop"), ("not hate", "self_distilled")}),
    ("stop_all", {("hate", "stop"), ("not hate", "stop")}),
    ("counter_speech", {("hate", "counter_narrative"), ("not hate", "self_distilled")}),
])
def test_each_mode_gives_its_targets(posts, mode, expect):
    candidates = targets.training_rows(posts, "train", task_with(), None, seed=1)
    assert all(r["output"] is None for r in candidates)  # the convert stage's rows do not depend on the mode
    rows, counts = targets.resolve(candidates, mode, STOP, replies_for(candidates))
    assert {(r["label"], r["target"]) for r in rows} == expect
    for r in rows:
        assert r["instruction"] == "Tell me what is your answer of the following message?\nMessage:"
        assert r["system"] == "" and r["input"].startswith("post ")
        expected = {"stop": STOP, "self_distilled": f"reply to {r['input']}",
                    "counter_narrative": f"answer {r['id'].split(':')[1]}"}[r["target"]]
        assert r["output"] == expected or (r["id"] == "dialoconan:60" and r["output"] == "reply b")
    assert sum(counts.values()) == len(candidates)
    needs = [targets.needs_reply(r, mode) for r in candidates]
    assert any(needs) == (mode != "stop_all")


def test_counter_speech_trains_only_on_hate_with_a_counter_narrative(posts):
    candidates = targets.training_rows(posts, "train", task_with(), None, seed=1)
    rows, counts = targets.resolve(candidates, "counter_speech", STOP, replies_for(candidates))
    without = posts[(posts["split"] == "train") & (posts["label"] == "hate")
                    & (posts["counter_narratives"].map(len) == 0)]["id"]
    assert len(without) > 0 and not {r["id"] for r in rows} & set(without)
    assert counts["counter_narrative (dropped: nothing to answer)"] == len(without)


def test_an_empty_self_distilled_reply_is_not_trained_on(posts):
    candidates = targets.training_rows(posts, "train", task_with(), None, seed=1)
    replies = {**replies_for(candidates), candidates[1]["id"]: "   "}
    assert candidates[1]["label"] == "not hate"
    rows, counts = targets.resolve(candidates, "stop_when_hateful", STOP, replies)
    assert candidates[1]["id"] not in {r["id"] for r in rows}
    assert counts["self_distilled (dropped: nothing to answer)"] == 1


def test_stop_message_is_configurable(posts):
    candidates = targets.training_rows(posts, "train", task_with(), None, seed=1)
    rows, _ = targets.resolve(candidates, "stop_all", "No.", {})
    assert {r["output"] for r in rows} == {"No."}


def test_rows_are_balanced_and_capped_and_seeded(posts):
    task = task_with()
    rows = targets.training_rows(posts, "train", task, 12, seed=3)
    assert len(rows) == 12 and collections.Counter(r["label"] for r in rows) == {"hate": 6, "not hate": 6}
    assert rows == targets.training_rows(posts, "train", task, 12, seed=3)
    assert rows != targets.training_rows(posts, "train", task, 12, seed=4)
    few = targets.balanced_sample(posts[posts["label"] == "not hate"].head(3).assign(label="not hate"), 2, 0)
    assert len(few) == 2


def test_train_sources_limit_training_rows(posts):
    rows = targets.training_rows(posts, "train", task_with("task.targets.train_sources=[dynahate]"), None, seed=1)
    assert {r["source"] for r in rows} == {"dynahate"}


def test_dialogue_history_only_when_asked(posts):
    plain = targets.training_rows(posts, "train", task_with(), None, seed=1)
    assert not any("history" in r for r in plain)
    rows = targets.training_rows(posts, "train", task_with("task.targets.dialogues=true"), None, seed=1)
    assert [r["history"] for r in rows if "history" in r] == [[["claim a", "reply a"]]]


def test_test_rows_carry_their_evaluation_set(posts):
    rows = targets.test_rows(posts, task_with())
    assert len(rows) == int((posts["split"] == "test").sum())
    sets = {(r["source"], r["label"]): r["set"] for r in rows}
    assert sets == {("dynahate", "hate"): "dynahate_hate", ("dynahate", "not hate"): "dynahate_not_hate",
                    ("multitarget_conan", "hate"): "conan", ("metahate", "not hate"): None}


def test_judge_rows_are_the_dynahate_posts_of_a_split(posts):
    rows = targets.judge_rows(posts, "test", "dynahate")
    assert len(rows) == 20 and {r["output"] for r in rows} == {"hate", "not hate"}
    assert all(r["instruction"] == "" and r["id"].startswith("dynahate:") for r in rows)


@pytest.mark.parametrize("text, finished, expect", [
    ("Hello there. How are", False, "Hello there."), ("Sure! Ask me", False, "Sure!"),
    ("No sentence end", False, "No sentence end"), ("Done. Fully", True, "Done. Fully"),
    ("e.g.this stays. Cut", False, "e.g.this stays."),
])
def test_a_capped_reply_ends_at_its_last_sentence(text, finished, expect):
    assert targets.trim_reply(text, finished) == expect
