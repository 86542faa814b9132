"""A generation task's replies (Stop-Hate): which systems answer which posts, how, and what is counted.

- Systems: the fine-tuned model with its training prompt (the evaluate stage); the base model alone and the base
  model with each of `task.prompted_systems` as system prompt, the paper's stop and counter-speech guideline
  prompts (the evaluate_zeroshot stage).
- Sets: the test posts of each of `eval.generation.sets` (conan, dynahate_hate, dynahate_not_hate), at most
  `max_prompts` per set, a seeded sample: the same posts for every system.
- Decodings: `sampled` (temperature, top_p, seeded per prompt, as the paper) and `greedy`, at most
  `max_new_tokens` new tokens, through `hatetune.inference` (the prompt built by `hatetune.prompts`).
- With eval.functional.enabled, every system also answers a functional suite's cases (`answer_suite`; HateCheck,
  `hatetune.functional`), with eval.generation.functional.decodings: its stop rate per functionality.
- Counted per set (`set_metrics`): the stop rate (the reply IS the stop message, `parsing.is_stop`), which on
  non-hateful posts is the over-refusal rate; replies that mention the stop message; replies the token cap cut;
  prompts the cutoff cut. Hateful-reply rates come from the judge stage (`hatetune.judge`).
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

from . import inference
from .io import atomic_path, read_jsonl, write_json, write_jsonl
from .parsing import is_stop, mentions_stop
from .paths import GROUPS_FILE, PREDICTIONS_FILE
from .sampling import Sampling

HATEFUL_SETS = ("conan", "dynahate_hate")
NON_HATEFUL_SETS = ("dynahate_not_hate",)
REPLIES = "replies.jsonl"
FINE_TUNED, BASE = "fine-tuned", "base"


def select(rows: Sequence[Mapping], sets: Sequence[str], max_prompts: int | None, seed: int) -> List[dict]:
    """The rows of each set (row["set"]), at most `max_prompts` per set: a sample seeded by (seed, set name), so a
    set's posts do not depend on the other sets; in set order, then file order."""
    import numpy as np

    chosen = []
    for name in sets:
        part = [dict(r) for r in rows if r.get("set") == name]
        if max_prompts is not None and len(part) > max_prompts:
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            part = [part[i] for i in sorted(rng.choice(len(part), size=max_prompts, replace=False))]
        chosen += part
    return chosen


def systems(task, adapter: bool) -> Dict[str, str]:
    """{system name: system prompt}: the fine-tuned model, or the base model alone and with each prompted system."""
    own = task.prompt.system or ""
    if adapter:
        return {FINE_TUNED: own}
    return {BASE: own, **{f"base + {key.replace('_', ' ')}": text for key, text in task.prompted_systems.items()}}


def slug(name: str) -> str:
    """A system's folder name: `base + stop prompt` -> `base_stop_prompt`."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def generate(model, tokenizer, rows: Sequence[Mapping], prompt_cfg, *, system: str, max_new_tokens: int,
             cutoff_len: int, sampling: Sampling | None = None, batch_size: int = 16, prefix_cache: bool = True,
             desc: str = "replies") -> tuple[List[str], List[bool], List[bool]]:
    """Each row's reply with `system` as its system prompt: (texts, finished with EOS, prompt cut).

    Prompts are cut by training's rule to `cutoff_len` plus the system prompt's own length, so a long guideline
    prompt does not eat the post: every system sees as much of it as training did."""
    rows = [{**row, "system": system} for row in rows]
    extra = len(tokenizer(system, add_special_tokens=False)["input_ids"]) if system else 0
    ids, truncated = inference.encode_prompts(rows, prompt_cfg, tokenizer, cutoff_len + extra, max_new_tokens)
    out = inference.run(model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        prefix_cache=prefix_cache, desc=desc, sampling=sampling)
    return out.texts, out.finished, truncated


def _rate(values: Sequence[bool]) -> float:
    return round(sum(values) / len(values), 6) if values else 0.0


def set_metrics(records: Sequence[Mapping], sets: Sequence[str]) -> dict:
    """Per set: n, stop_rate, stop_mention_rate, unfinished_rate (cut by the token cap), mean_reply_words,
    truncated_prompts; pooled: stop_rate_hateful (hateful sets) and over_refusal_rate (non-hateful sets)."""
    out: dict = {}
    for name in sets:
        part = [r for r in records if r["set"] == name]
        out[name] = {"n": len(part), "stop_rate": _rate([r["stop"] for r in part]),
                     "stop_mention_rate": _rate([r["stop_mentioned"] for r in part]),
                     "unfinished_rate": _rate([not r["finished"] for r in part]),
                     "mean_reply_words": round(sum(len(r["reply"].split()) for r in part) / max(len(part), 1), 2),
                     "truncated_prompts": sum(r["truncated"] for r in part)}
    hateful = [r["stop"] for r in records if r["set"] in HATEFUL_SETS]
    normal = [r["stop"] for r in records if r["set"] in NON_HATEFUL_SETS]
    if hateful:
        out["stop_rate_hateful"] = _rate(hateful)
    if normal:
        out["over_refusal_rate"] = _rate(normal)
    return out


def _answers(model, tokenizer, rows: Sequence[Mapping], cfg, adapter: bool, decodings: Sequence[str], label: str = ""):
    """(system, decoding, (texts, finished, prompt cut)) for every system and decoding, each on all `rows`."""
    g = cfg.eval.generation
    for name, system in systems(cfg.task, adapter).items():
        for decoding in decodings:
            sampling = Sampling(g.temperature, g.top_p, cfg.seed) if decoding == "sampled" else None
            yield name, decoding, generate(
                model, tokenizer, rows, cfg.task.prompt, system=system, max_new_tokens=g.max_new_tokens,
                cutoff_len=cfg.train.cutoff_len, sampling=sampling, batch_size=cfg.eval.batch_size,
                prefix_cache=cfg.eval.prefix_cache, desc=f"{label}{name} ({decoding})")


def evaluate_systems(model, tokenizer, rows: Sequence[Mapping], cfg, adapter: bool) -> Dict[str, Dict[str, dict]]:
    """{system: {decoding: {"records": [...], "metrics": set_metrics}}} for every system and decoding."""
    g, stop_message = cfg.eval.generation, cfg.task.stop_message
    results: Dict[str, Dict[str, dict]] = {}
    for name, decoding, (texts, finished, truncated) in _answers(model, tokenizer, rows, cfg, adapter, g.decodings):
        records = [{"id": row["id"], "set": row["set"], "label": row["label"], "source": row["source"],
                    "input": row["input"], **({"history": row["history"]} if row.get("history") else {}),
                    "reply": text, "finished": done, "truncated": cut, "stop": is_stop(text, stop_message),
                    "stop_mentioned": mentions_stop(text, stop_message)}
                   for row, text, done, cut in zip(rows, texts, finished, truncated)]
        results.setdefault(name, {})[decoding] = {"records": records, "metrics": set_metrics(records, g.sets)}
    return results


def answer_suite(model, tokenizer, rows: Sequence[Mapping], cfg, adapter: bool, name: str) -> Dict[str, Dict[str, tuple]]:
    """{system: {decoding: (replies, finished, prompt cut)}}: every system's replies to a functional suite's cases
    (`hatetune.functional`), with each of eval.generation.functional.decodings; scored by
    `evaluation.score_suite_replies`."""
    found: Dict[str, Dict[str, tuple]] = {}
    for system, decoding, answers in _answers(model, tokenizer, rows, cfg, adapter,
                                              cfg.eval.generation.functional.decodings, f"{name}: "):
        found.setdefault(system, {})[decoding] = answers
    return found


def write_results(base: str | Path, results: Mapping[str, Mapping[str, dict]], run_info: Mapping,
                  suite: tuple[str, Mapping[str, Mapping[str, dict]]] | None = None) -> None:
    """`<base>.json` ({system: {decoding: metrics}}, a DVC metric) and `<base>/<system>/<decoding>/replies.jsonl`,
    `<base>/run.json` (settings and which folder is which system), each written atomically. With `suite` (its
    name, {system: {decoding: evaluation.score_suite_replies result}}) also `<base>.json`'s {suite name: {system:
    {decoding: metrics}}} and `<base>/<suite name>/<system>/<decoding>/{predictions.jsonl, groups.json}`."""
    base = Path(base)
    with atomic_path(base) as tmp:
        tmp.mkdir(parents=True)
        for name, decodings in results.items():
            for decoding, result in decodings.items():
                write_jsonl(tmp / slug(name) / decoding / REPLIES, result["records"])
        if suite is not None:
            for name, decodings in suite[1].items():
                for decoding, result in decodings.items():
                    folder = tmp / suite[0] / slug(name) / decoding
                    write_jsonl(folder / PREDICTIONS_FILE, result["records"])
                    write_json(folder / GROUPS_FILE, result["groups"])
        write_json(tmp / "run.json", {**run_info, "systems": {slug(name): name for name in results}})
    metrics = {name: {d: r["metrics"] for d, r in decodings.items()} for name, decodings in results.items()}
    if suite is not None:
        metrics[suite[0]] = {name: {d: r["metrics"] for d, r in decodings.items()} for name, decodings in suite[1].items()}
    write_json(base.with_name(base.name + ".json"), metrics)


def read_suite_groups(base: str | Path, suite: str) -> Dict[str, Dict[str, dict]]:
    """{system: {decoding: groups.json}} of a suite's replies (`write_results`); empty when there are none."""
    import json

    base = Path(base)
    run = base / "run.json"
    if not run.is_file():
        return {}
    names = json.loads(run.read_text(encoding="utf-8")).get("systems", {})
    found: Dict[str, Dict[str, dict]] = {}
    for folder, name in names.items():
        for path in sorted((base / suite / folder).glob(f"*/{GROUPS_FILE}")):
            found.setdefault(name, {})[path.parent.name] = json.loads(path.read_text(encoding="utf-8"))
    return found


def read_results(base: str | Path) -> Dict[str, Dict[str, List[dict]]]:
    """{system: {decoding: records}} written by `write_results` (empty when there is no such folder)."""
    import json

    base = Path(base)
    run = base / "run.json"
    if not run.is_file():
        return {}
    names = json.loads(run.read_text(encoding="utf-8")).get("systems", {})
    found: Dict[str, Dict[str, List[dict]]] = {}
    for folder, name in names.items():
        for path in sorted((base / folder).glob(f"*/{REPLIES}")):
            found.setdefault(name, {})[path.parent.name] = read_jsonl(path)
    return found


def summary_line(name: str, decoding: str, m: Mapping) -> str:
    parts = [f"{s} stop {m[s]['stop_rate']:.0%} (n={m[s]['n']})" for s in m if isinstance(m[s], dict)]
    return f"{name} [{decoding}]: " + ", ".join(parts)
