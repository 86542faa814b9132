"""The report section and model card of a generation task (Stop-Hate): the four systems side by side (stop rate on
hateful posts, over-refusal on non-hateful ones, hateful-reply rate by the judge), the paper's Table 5 as
reference rows, the judge and its own test scores, a plot, a few example replies under a content warning, and,
with a functional suite (eval.functional.enabled), each system's stop rate per functionality
(`report_groups.stop_section`).

Pure functions of the stages' outputs and the config, like `hatetune.report`, whose tables (training, energy,
splits) and plots (loss, the judges' per-class F1 and confusion) it reuses. Example replies are shown for
DynaHate posts only: CONAN is research-only and may not be copied into a repository (report.md is git-tracked).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Mapping, Sequence

from . import generation, paths, report
from .model_card import _kv_table, base_weights_note, data_note
from .plots import plot_heatmap, plot_reply_rates
from .report_groups import heatmap_data, stop_section

# Piot & Parapar (NAACL 2025), Table 5: % of replies MetaHateBERT labels hateful, on CONAN (4,405 posts) and
# DynaHate (DGHS, hateful posts); temperature 0.8, top_p 0.95, <= 280 new tokens. Non-hateful posts: not measured.
PAPER_TABLE_5 = [("Llama-2-13b-chat base", 68.17, 34.64), ("Llama-2-13b-chat + stop prompt", 0.56, 0.71),
                 ("Llama-2-13b-chat fine-tuned (Stop-Hate)", 0.94, 0.55), ("Mistral-7B base", 59.30, 42.55),
                 ("Mistral-7B fine-tuned", 21.04, 20.05)]
SET_NAMES = {"conan": "CONAN", "dynahate_hate": "DynaHate hate", "dynahate_not_hate": "DynaHate not hate"}
SHOWN_SETS = ("dynahate_hate", "dynahate_not_hate")  # example replies: never CONAN text (research-only)


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def gather(cfg) -> dict:
    """What the report and card show: report.gather's facts, with the judges in place of the classifiers."""
    facts = report.gather(cfg)
    judged = report.read_json(paths.results_json(paths.results_base(paths.JUDGE))) or {}
    replies = {**generation.read_results(paths.results_base(paths.ZEROSHOT)),
               **generation.read_results(paths.results_base(paths.EVAL))}
    zeroshot, fine_tuned = (report.read_json(paths.results_json(paths.results_base(name))) or {}
                            for name in (paths.ZEROSHOT, paths.EVAL))
    suite = cfg.eval.functional.source.name if cfg.eval.functional.enabled else None
    # a suite's results are filed under its name beside the systems: {suite: {system: {decoding: metrics}}}
    suite_systems = {**(zeroshot.pop(suite, None) or {}), **(fine_tuned.pop(suite, None) or {})} if suite else {}
    systems = {**zeroshot, **fine_tuned}
    facts["suite_groups"] = {}  # not report.write_plots' classifier heatmap: this task's is drawn by write_plots
    order = [generation.FINE_TUNED, generation.BASE] + [s for s in {**systems, **suite_systems}
                                                         if s not in (generation.FINE_TUNED, generation.BASE)]
    judge = judged.get("judge") or {}
    tfidf = "TF-IDF judge (baseline stage)"
    judges = {tfidf: (report.read_json(paths.results_json(paths.results_base(paths.BASELINE))) or {}).get("test")}
    facts["confusions"] = {tfidf: report.read_confusion(paths.confusion_csv(paths.BASELINE, "test"), facts["labels"])}
    if judge.get("kind") == "adapter":  # the adapter judge's own test scores, beside the TF-IDF fallback's
        own = paths.results_base(paths.JUDGE) / paths.JUDGE_TEST
        judges = {"adapter judge": report.read_json(own / "metrics.json"), **judges}
        facts["confusions"] = {"adapter judge": report.read_confusion(own / paths.CONFUSION_FILE, facts["labels"]),
                               **facts["confusions"]}
    facts.update(systems=judges, reply_metrics={s: systems[s] for s in order if s in systems},
                 judged={s: judged[s] for s in order if s in judged}, judge=judge, replies=replies)
    if suite:  # each system's replies to the functional suite: a stop rate per functionality
        groups = {**generation.read_suite_groups(paths.results_base(paths.ZEROSHOT), suite),
                  **generation.read_suite_groups(paths.results_base(paths.EVAL), suite)}
        facts.update(stop_suite=suite, stop_suite_systems={s: suite_systems[s] for s in order if s in suite_systems},
                     stop_suite_groups={f"{s} ({d})": t for s in order for d, t in groups.get(s, {}).items()},
                     stop_suite_info=report.read_json(paths.FUNCTIONAL_DIR / paths.FUNCTIONAL_SUMMARY))
    return facts


def rates_table(cfg, facts: Mapping) -> str:
    """One row per system and decoding, then the paper's Table 5 (reference rows, marked as such)."""
    sets = list(cfg.eval.generation.sets)
    stop_sets = [s for s in sets if s in generation.HATEFUL_SETS] + [s for s in sets
                                                                      if s in generation.NON_HATEFUL_SETS]
    head = ([f"{'over-refusal' if s in generation.NON_HATEFUL_SETS else 'stop rate'}: {SET_NAMES[s]}"
             for s in stop_sets] + [f"hateful replies: {SET_NAMES[s]}" for s in sets])
    lines = ["| system | decoding | n per set | " + " | ".join(head) + " |", "|---|---|---:|" + "---:|" * len(head)]
    for system, decodings in facts["reply_metrics"].items():
        for decoding, m in decodings.items():
            judged = facts["judged"].get(system, {}).get(decoding, {})
            ns = "/".join(str(m[s]["n"]) for s in sets if s in m)
            cells = [pct(m.get(s, {}).get("stop_rate")) for s in stop_sets]
            cells += [pct(judged.get(s, {}).get("hateful_reply_rate")) for s in sets]
            lines.append(f"| {system} | {decoding} | {ns} | " + " | ".join(cells) + " |")
    for name, conan, dynahate in PAPER_TABLE_5:
        paper = {"conan": f"{conan:.2f}%", "dynahate_hate": f"{dynahate:.2f}%"}
        cells = ["–" if s in generation.HATEFUL_SETS else "not measured" for s in stop_sets]
        cells += [paper.get(s, "not measured") for s in sets]
        lines.append(f"| *{name} (paper, Table 5; reference)* | sampled | all | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def judge_note(facts: Mapping) -> str:
    j = facts["judge"]
    if not j:
        return "No judge results (metrics/judge.json missing)."
    why = f" (fallback: {j['fallback_reason']})" if j.get("fallback_reason") else ""
    rule = j.get("decision_rule")
    if rule:
        why += (f", labelling through P({rule['positive']}) >= {rule['threshold']:g} at temperature "
                f"{rule['temperature']:g}, fitted on {rule['dev_rows']} DynaHate dev posts")
    return (f"Hateful replies are judged by **{j['name']}**{why}: its own test macro-F1 on the held-out DynaHate "
            f"posts is **{j['test_macro_f1']:.4f}** (accuracy {j['test_accuracy']:.4f}, hate precision "
            f"{j['test_hate_precision']:.2f} / recall {j['test_hate_recall']:.2f}, n={j['test_n']}). DynaHate posts "
            "are the judge's own domain; chat replies are not, so its rates on replies are less certain than this "
            "score, and the paper's judge (MetaHateBERT) differs: compare the reference rows by their order of "
            f"magnitude only. {j['replies_judged']} distinct replies were judged. A reply that is the stop message "
            f"counts as not hateful" + (f" (this judge labels the stop message itself `{j['stop_message_label']}`)"
                                       if j.get("stop_message_label") else "") + ".")


def examples(cfg, facts: Mapping) -> str:
    """A few replies per system on DynaHate posts (never CONAN's, research-only), under a content warning."""
    n, decoding = cfg.eval.generation.examples, cfg.eval.generation.decodings[0]
    if not n:
        return "No examples (eval.generation.examples is 0)."
    out = ["> **Content warning**: the posts below are hateful or about hate; some replies are too. CONAN posts are "
           "not shown (research-only licence).", ""]
    for system in facts["reply_metrics"]:
        records = facts["replies"].get(system, {}).get(decoding, [])
        for name in SHOWN_SETS:
            for r in [r for r in records if r["set"] == name][:n]:
                out += [f"**{system}** ({decoding}), {SET_NAMES[name]}:", "", "```text",
                        f"post:  {r['input'][:300]}", f"reply: {r['reply'][:400]}", "```", ""]
    return "\n".join(out)


def write_plots(facts: Mapping, out_dir: str | Path) -> List[str]:
    """reply_rates.png and, with a functional suite, functional.png (functional accuracy per functionality)."""
    path = Path(out_dir) / "reply_rates.png"
    if not facts["reply_metrics"]:
        return []
    plot_reply_rates(facts["reply_metrics"], facts["judged"], path)
    written = [str(path)]
    grid = heatmap_data(facts.get("stop_suite_groups") or {}, (facts.get("stop_suite_info") or {}).get("order"))
    if grid:
        rows, columns, values = grid
        kept = [i for i, row in enumerate(values) if any(v is not None for v in row)]  # sampled functionalities
        heatmap = Path(out_dir) / paths.FUNCTIONAL_HEATMAP.name
        plot_heatmap([rows[i] for i in kept], columns, [values[i] for i in kept], heatmap,
                     f"{facts['stop_suite']}: functional accuracy (stopped iff hateful) per functionality")
        written.append(str(heatmap))
    return written


def _summary(cfg, facts: Mapping) -> List[str]:
    g, t = cfg.eval.generation, cfg.task.targets
    return [f"Replies of four systems to the same held-out posts: the base model, the base with the paper's stop "
            f"prompt and with its counter-speech prompt as system prompt, and the model fine-tuned in mode "
            f"`{t.mode}` (stop message: `{cfg.task.stop_message}`). Decodings: {', '.join(g.decodings)} (temperature "
            f"{g.temperature:g}, top_p {g.top_p:g}, seeded), at most {g.max_new_tokens} new tokens; at most "
            f"{g.max_prompts or 'all'} posts per set. A stop is a reply that is the stop message once case, "
            "whitespace and quotes are normalised; over-refusal is the stop rate on non-hateful posts, which the "
            "paper did not measure (a model that refuses everything scores perfectly there)."]


def build_report(cfg, facts: Mapping, plots: Sequence[str]) -> str:
    warnings = (facts["data"] or {}).get("warnings") or []
    out = [f"# hatetune report: {cfg.task.name} / {cfg.model.name}", "",
           "> **Content warning**: this report concerns hate speech and quotes model replies to hateful posts.", "",
           *_summary(cfg, facts), ""] + [f"> Note: {w}" for w in warnings] + ([""] if warnings else [])
    heatmap = next((p for p in plots if Path(p).name == paths.FUNCTIONAL_HEATMAP.name), None)
    out += ["## Results", "", rates_table(cfg, facts), "", judge_note(facts), "",
            "### The judges on their own test posts", "",
            report.results_table(facts["systems"] if any(facts["systems"].values()) else {}), "",
            *stop_section(facts.get("stop_suite") or "", facts.get("stop_suite_systems") or {},
                          facts.get("stop_suite_groups") or {}, facts.get("stop_suite_info"),
                          _link(heatmap) if heatmap else None),
            "## Example replies", "", examples(cfg, facts), "",
            "## Data", "", report.split_sizes_table(facts["data"]), "",
            "## Training", "", report.training_summary(facts["train"]), "",
            "## Energy and emissions", "", report.carbon_table(facts["measurements"], facts["estimate"]), "",
            "## Plots", ""]
    out += [f"![{Path(p).stem}]({_link(p)})" for p in plots if p != heatmap]
    return "\n".join(out) + "\n"


def _link(plot: str) -> str:
    return Path(plot).relative_to(paths.REPORT_MD.parent).as_posix()


def details(cfg, base_source) -> dict:
    """report.hyperparameters with this task's targets and decoding in place of a classifier's evaluation."""
    g, t = cfg.eval.generation, cfg.task.targets
    found = report.hyperparameters(cfg, base_source)
    found["targets"] = (f"{t.mode}, stop message `{cfg.task.stop_message}`, trained on "
                        f"{', '.join(t.train_sources) if t.train_sources else 'every source'}")
    found["evaluation"] = (f"{', '.join(g.decodings)} (temperature {g.temperature:g}, top_p {g.top_p:g}), at most "
                           f"{g.max_new_tokens} new tokens, {g.max_prompts or 'all'} posts per set, batch "
                           f"{cfg.eval.batch_size}")
    return found


def model_card(cfg, facts: Mapping, example_prompt: str) -> str:
    """README.md of the released Stop-Hate adapter (Hugging Face model-card style)."""
    base_source = facts.get("base_source")
    header = ["---"] + ([f"base_model: {cfg.model.hub_id}"] if base_source and base_source["kind"] == "hub" else [])
    header += ["library_name: peft", "pipeline_tag: text-generation", "tags:", "- peft", "- lora", "- qlora",
               "- hate-speech", "- conversational", "- stop-hate", "- hatetune", "language:", "- en", "---", ""]
    t = cfg.task.targets
    body = [f"# {cfg.model.name} Stop-Hate adapter ({t.mode})", "",
            "> **Content warning**: this model concerns hate speech; its data, evaluation and example replies "
            "contain offensive, slurring and hateful language.", "",
            f"A LoRA adapter for {cfg.model.hub_id} that answers hateful posts with `{cfg.task.stop_message}`"
            + (" and other posts as the base model did (self-distilled replies)" if t.mode == "stop_when_hateful"
               else " and every post the same way (seed A's recipe)" if t.mode == "stop_all"
               else " with a counter-narrative, and other posts as the base model did") +
            ". Trained and evaluated with hatetune (`dvc repro` reproduces this folder); a reproduction of "
            "Piot & Parapar, \"Decoding Hate\" (NAACL 2025), irlab-udc/LLaMA2-13b-Stop-Hate.", "",
            base_weights_note(base_source), "",
            "## Model details", "", _kv_table(details(cfg, base_source)), "",
            "## Training data", "", data_note(facts.get("data_source"), cfg), "",
            "CONAN (DIALOCONAN, Multitarget-CONAN, KN-grounded) is licensed for research only: this card quotes none "
            "of it.", "", report.split_sizes_table(facts["data"]), "",
            "## Prompt", "", "Single-turn chat through the model's chat template; the model input for a post "
            "`<post>` (the reply follows it):", "", "```text", example_prompt, "```", "",
            "## Evaluation", "", *_summary(cfg, facts), "", rates_table(cfg, facts), "", judge_note(facts), "",
            "## Limitations and bias", "",
            "- Over-refusal: a model trained to stop may refuse ordinary posts; the over-refusal column above is "
            "that rate on non-hateful DynaHate posts. Read it beside the stop rate.",
            "- The hateful-reply rate is a classifier's opinion about replies outside its training domain.",
            "- A small model on a CPU-sized sample: the numbers are a pipeline check, not a safety guarantee. Do "
            "not deploy it as a moderation layer without human review.", "",
            "## Environmental impact", "", report.carbon_table(facts["measurements"], facts["estimate"]), ""]
    return "\n".join(header + body)
