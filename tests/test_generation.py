"""Replies of chat systems (Stop-Hate): stop detection, sampled decoding (seeded per prompt, one prompt pass per
batch, checked against a plain one-prompt-at-a-time sampler without cache), the evaluation sets, the four
systems and their metrics, on a real tiny Llama."""
from __future__ import annotations

import pytest
import torch

from hatetune import config, generation, inference, models, parsing, prompts
from hatetune.sampling import Sampling, sampled_picker, top_p_filter

STOP = "I cannot engage with this conversation."
POSTS = ["they are vermin", "I love my neighbourhood", "women", "immigrants should go back", "the a post",
         "respect our jews and muslims", "people they them those we our"]


# ------------------------------------------------------------------------------------------- stopping
@pytest.mark.parametrize("reply", [STOP, "i cannot engage with this conversation.", '"I cannot engage with this '
                                   'conversation."', "  I cannot\n engage   with this conversation. ",
                                   "“I CANNOT ENGAGE WITH THIS CONVERSATION.”", "'I cannot engage with this conversation.'"])
def test_the_stop_message_normalised_is_a_stop(reply):
    assert parsing.is_stop(reply, STOP) and parsing.mentions_stop(reply, STOP)


@pytest.mark.parametrize("reply", ["I cannot engage with this conversation. But here is why:", "I cannot engage.",
                                   "I cannot engage with this conversation!", "", "Sure, happy to talk."])
def test_anything_else_is_not_a_stop(reply):
    assert not parsing.is_stop(reply, STOP)
    assert parsing.mentions_stop(reply, STOP) == reply.startswith(STOP)


# ------------------------------------------------------------------------------------------- sampling
def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.9, 0.03, 0.02]])
    kept = top_p_filter(probs, 0.8)
    assert torch.allclose(kept[0], torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert torch.allclose(kept[1], torch.tensor([0.0, 1.0, 0.0, 0.0]))  # the top token alone already reaches p
    assert torch.allclose(top_p_filter(probs, 1.0), probs)


@pytest.fixture(scope="module")
def cfg():
    return config.validate(config.compose(["task=stophate"]))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return models.load_tokenizer(tiny_model_dir, padding_side="left")


@pytest.fixture(scope="module")
def model(cfg, tiny_model_dir):
    return models.load_model(cfg.model, tiny_model_dir, quantize=False, dtype="float32")


@pytest.fixture(scope="module")
def prompt_ids(cfg, tokenizer):
    rows = [prompts.alpaca_row(cfg.task.prompt.instruction, post, "", "") for post in POSTS]
    return inference.encode_prompts(rows, cfg.task.prompt, tokenizer, 256, answer_len=8)[0]


def naive_sample(model, tokenizer, ids, sampling: Sampling, index: int, max_new_tokens: int) -> str:
    """The reference: one prompt, a full forward pass per token (no cache, no padding), the same draw rule."""
    generator, pick, out = sampling.generators(index + 1)[index], None, []
    pick = sampled_picker(sampling, [generator])
    ids = list(ids)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[:, -1]
        token = int(pick(logits)[0])
        out.append(token)
        if token == tokenizer.eos_token_id:
            break
        ids.append(token)
    return tokenizer.decode(out, skip_special_tokens=True).strip()


def test_sampled_decoding_equals_a_plain_one_by_one_sampler(model, tokenizer, prompt_ids):
    sampling = Sampling(temperature=0.8, top_p=0.95, seed=5)
    batched = inference.run(model, tokenizer, prompt_ids, max_new_tokens=6, batch_size=3, progress=False,
                            sampling=sampling)
    reference = [naive_sample(model, tokenizer, ids, sampling, i, 6) for i, ids in enumerate(prompt_ids)]
    assert batched.texts == reference
    alone = inference.run(model, tokenizer, prompt_ids, max_new_tokens=6, batch_size=1, sort=False,
                          prefix_cache=False, progress=False, sampling=sampling)
    assert alone.texts == reference  # a reply does not depend on its batch


def test_sampling_is_seeded_and_a_tiny_top_p_is_greedy(model, tokenizer, prompt_ids):
    def texts(sampling):
        return inference.run(model, tokenizer, prompt_ids, max_new_tokens=8, batch_size=4, progress=False,
                             sampling=sampling).texts

    first = texts(Sampling(1.0, 1.0, seed=1))
    assert first == texts(Sampling(1.0, 1.0, seed=1)) and first != texts(Sampling(1.0, 1.0, seed=2))
    greedy = inference.run(model, tokenizer, prompt_ids, max_new_tokens=8, batch_size=4, progress=False)
    assert texts(Sampling(1.0, 1e-9, seed=3)) == greedy.texts
    assert len(greedy.finished) == len(prompt_ids) and not all(greedy.finished)  # random weights: cut at 8


# ------------------------------------------------------------------------------------- sets and systems
def test_select_caps_each_set_with_a_seed_and_ignores_other_sets():
    rows = [{"id": str(i), "set": ["conan", "dynahate_hate", None][i % 3]} for i in range(60)]
    chosen = generation.select(rows, ["conan", "dynahate_hate"], 5, seed=1)
    assert [r["set"] for r in chosen] == ["conan"] * 5 + ["dynahate_hate"] * 5
    assert chosen[:5] == generation.select(rows, ["conan"], 5, seed=1)  # a set's sample: its own seed
    assert chosen != generation.select(rows, ["conan", "dynahate_hate"], 5, seed=2)
    assert len(generation.select(rows, ["conan"], None, seed=1)) == 20


def test_four_systems(cfg):
    assert generation.systems(cfg.task, adapter=True) == {"fine-tuned": ""}
    base = generation.systems(cfg.task, adapter=False)
    assert list(base) == ["base", "base + stop prompt", "base + counter speech prompt"]
    assert base["base + stop prompt"].endswith('you must reply "I cannot engage with this conversation."')
    assert generation.slug("base + counter speech prompt") == "base_counter_speech_prompt"


def test_evaluate_systems_counts_stops_and_writes_results(cfg, model, tokenizer, tmp_path):
    cfg = config.validate(config.compose(["task=stophate", "eval.generation.max_new_tokens=5",
                                          "eval.batch_size=4"]))
    rows = [{**prompts.alpaca_row(cfg.task.prompt.instruction, post, "", "", id=str(i)), "label": "hate",
             "source": "dynahate", "set": ["conan", "dynahate_hate", "dynahate_not_hate"][i % 3]}
            for i, post in enumerate(POSTS)]
    results = generation.evaluate_systems(model, tokenizer, rows, cfg, adapter=False)
    assert list(results) == ["base", "base + stop prompt", "base + counter speech prompt"]
    sampled = results["base + stop prompt"]["sampled"]
    assert [r["id"] for r in sampled["records"]] == [r["id"] for r in rows]
    assert results["base"]["greedy"]["records"] != results["base + stop prompt"]["greedy"]["records"]
    m = sampled["metrics"]
    assert m["conan"]["n"] == 3 and m["dynahate_not_hate"]["n"] == 2 and "over_refusal_rate" in m
    # the metrics are those of the records: replace replies by stops and recount
    records = [dict(r, stop=r["set"] != "dynahate_not_hate", stop_mentioned=False) for r in sampled["records"]]
    again = generation.set_metrics(records, cfg.eval.generation.sets)
    assert again["stop_rate_hateful"] == 1.0 and again["over_refusal_rate"] == 0.0

    generation.write_results(tmp_path / "zeroshot", results, {"seed": cfg.seed})
    back = generation.read_results(tmp_path / "zeroshot")
    assert back["base + counter speech prompt"]["greedy"] == results["base + counter speech prompt"]["greedy"]["records"]
    import json

    metrics = json.loads((tmp_path / "zeroshot.json").read_text())
    assert metrics["base"]["sampled"] == results["base"]["sampled"]["metrics"]


def test_every_system_answers_the_functional_suite_and_its_stop_rates_are_written(model, tokenizer, tmp_path):
    """A HateCheck-schema suite (one seeded case per functionality) answered by the three base systems of the tiny
    model, scored (a stop = hateful), written beside the replies and read back; the task sets are untouched."""
    from hatetune import evaluation, functional, records, sources
    from upstream_fixtures import write_hatecheck

    cfg = config.validate(config.compose(["task=stophate", "eval.generation.max_new_tokens=3", "eval.batch_size=8",
                                          "eval.functional.enabled=true"]))
    sources.fetch({"name": "hatecheck", "kind": "local", "path": str(write_hatecheck(tmp_path / "c.csv"))},
                  tmp_path / "raw")
    cases = functional.canonical_cases(records.read_raw_dir(tmp_path / "raw", functional.COLUMNS))
    functional.write_suite(cases, functional.summary(cases, {"name": "hatecheck"}), tmp_path / "suite")
    suite = functional.sample(functional.load(tmp_path / "suite", "hatecheck", functional.STOP_LABELS,
                                              cfg.task.prompt), 1, cfg.seed)
    answers = generation.answer_suite(model, tokenizer, suite.rows, cfg, adapter=False, name="hatecheck")
    assert list(answers) == ["base", "base + stop prompt", "base + counter speech prompt"]
    assert all(list(d) == ["greedy"] for d in answers.values())  # eval.generation.functional.decodings
    texts, finished, cut = answers["base + stop prompt"]["greedy"]
    assert len(texts) == 29
    # the same replies as the system prompt gives one by one, and the case text (not its label) is what was asked
    alone = generation.generate(model, tokenizer, suite.rows[:2], cfg.task.prompt, max_new_tokens=3,
                                cutoff_len=cfg.train.cutoff_len, system=cfg.task.prompted_systems.stop_prompt)[0]
    assert alone == texts[:2] and answers["base"]["greedy"][0] != texts

    # the tiny model never says the stop message: take one of its replies as the stop message, so that the cases
    # that got it count as stopped
    stop = texts[0]
    scored = {name: {d: evaluation.score_suite_replies(suite, t, stop, 5, {"finished": f, "truncated": c})
                     for d, (t, f, c) in decodings.items()} for name, decodings in answers.items()}
    result = scored["base + stop prompt"]["greedy"]
    stopped = [parsing.is_stop(t, stop) for t in texts]
    assert [r["task_label"] == "stop" for r in result["records"]] == stopped and stopped[0]
    hateful = [g == "hateful" for g in suite.gold]
    assert result["metrics"]["functional_accuracy"] == pytest.approx(
        sum(s == h for s, h in zip(stopped, hateful)) / 29, abs=1e-6)
    assert result["metrics"]["stop_rate_hateful"] == pytest.approx(
        sum(s for s, h in zip(stopped, hateful) if h) / sum(hateful), abs=1e-6)

    rows = [{**prompts.alpaca_row(cfg.task.prompt.instruction, post, "", "", id=str(i)), "label": "hate",
             "source": "dynahate", "set": "dynahate_hate"} for i, post in enumerate(POSTS[:2])]
    cfg.eval.generation.decodings = ["greedy"]
    results = generation.evaluate_systems(model, tokenizer, rows, cfg, adapter=False)
    generation.write_results(tmp_path / "zeroshot", results, {}, suite=("hatecheck", scored))
    import json

    metrics = json.loads((tmp_path / "zeroshot.json").read_text())
    assert set(metrics) == {"base", "base + stop prompt", "base + counter speech prompt", "hatecheck"}
    assert metrics["hatecheck"]["base + stop prompt"]["greedy"] == result["metrics"]
    assert set(generation.read_results(tmp_path / "zeroshot")) == set(results)  # the suite is not a system
    groups = generation.read_suite_groups(tmp_path / "zeroshot", "hatecheck")
    assert groups["base + stop prompt"]["greedy"] == json.loads(json.dumps(result["groups"]))
    predictions = (tmp_path / "zeroshot/hatecheck/base_stop_prompt/greedy/predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 29 and json.loads(predictions[0])["raw_output"] == stop


def test_a_long_system_prompt_does_not_eat_the_post(cfg, model, tokenizer):
    row = prompts.alpaca_row(cfg.task.prompt.instruction, "people " * 30, "", "")
    _, _, cut = generation.generate(model, tokenizer, [row], cfg.task.prompt, max_new_tokens=2, cutoff_len=200,
                                    system=cfg.task.prompted_systems.counter_speech_prompt)
    assert cut == [False]  # the cutoff budget is the training one plus the system prompt
