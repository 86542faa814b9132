"""The report's per-group and functional sections: whom each system fails (its results per target group, type and
round of the task's test split) and where it fails (a functional suite's functionalities), the three systems side
by side; for a generation task (Stop-Hate), each system's stop rate per functionality. Pure functions of the evaluation stages' `groups.json` and metrics (`hatetune.group_metrics`)."""
from __future__ import annotations

from typing import Callable, List, Mapping, Optional, Sequence

from .functional import FUNCTIONALITY, HATEFUL, REFERENCE, REFERENCE_SOURCE, TARGET
from .group_metrics import by_size

SMALL_MARK = "†"


def _cell(stats: Optional[Mapping]) -> str:
    if not stats:
        return "–"
    f1 = "–" if stats["f1"] is None else f"{stats['f1']:.2f}"
    return f"{stats['accuracy']:.2f} / {f1}"


def _stop_cell(stats: Optional[Mapping]) -> str:
    return "–" if not stats else f"{stats['positive_rate']:.2f}"


def group_table(tables: Mapping[str, Optional[Mapping]], key: str, order: Optional[Sequence[str]] = None,
                names: Optional[Mapping[str, str]] = None, cell: Callable[[Optional[Mapping]], str] = _cell,
                heading: str = "acc / F1") -> str:
    """Markdown: one row per group of breakdown `key` (largest first, or `order`; shown as `names` say), each
    system's `cell` (accuracy / F1 of the positive label) under `<system> <heading>`. `tables`: {system:
    groups.json content or None}. Groups below the minimum size are marked."""
    present = {name: t["breakdowns"].get(key, {}) for name, t in tables.items() if t}
    if not present:
        return ""
    reference = max(present.values(), key=len)
    groups = list(order) if order is not None else by_size(reference)
    positive = next(t["positive"] for t in tables.values() if t)
    lines = [f"| {key} | n | gold {positive} | " + " | ".join(f"{name} {heading}" for name in present) + " |",
             "|---|---:|---:|" + "---:|" * len(present)]
    for group in groups:
        stats = next((t[group] for t in present.values() if group in t), None)
        if stats is None:
            continue
        mark = SMALL_MARK if stats["small"] else ""
        lines.append(f"| {(names or {}).get(group, group)}{mark} | {stats['n']} | {stats['positive_gold']} | "
                     + " | ".join(cell(t.get(group)) for t in present.values()) + " |")
    return "\n".join(lines)


def _gap_line(name: str, gap: Optional[Mapping]) -> str:
    if not gap or gap.get("accuracy_gap") is None:
        compared = (gap or {}).get("groups_compared", 0)
        return f"- {name}: no gap ({compared} group{'s' if compared != 1 else ''} large enough to compare)"
    return (f"- {name}: **{gap['accuracy_gap']:.2f}** between {gap['best_group']} ({gap['best_accuracy']:.2f}, "
            f"n {gap['best_n']}) and {gap['worst_group']} ({gap['worst_accuracy']:.2f}, n {gap['worst_n']})")


def _small_note(tables: Mapping[str, Optional[Mapping]]) -> str:
    meta = next((t for t in tables.values() if t), None)
    if not meta:
        return ""
    not_groups = ", ".join(meta.get("not_groups") or [])
    return (f"Groups marked {SMALL_MARK} have fewer than {meta['min_size']} examples (`eval.min_group_size`): shown, "
            "left out of the gap. Read any group of a few dozen posts as a rough indication (95% intervals in "
            "`groups.json`)." + (f" Not compared as groups: {not_groups}." if not_groups else ""))


def groups_section(split: str, tables: Mapping[str, Optional[Mapping]], systems: Mapping[str, Optional[Mapping]],
                   gap_key: Optional[str]) -> List[str]:
    """## Results per group: one table per breakdown of the `split` results, and each system's largest gap."""
    present = [t for t in tables.values() if t]
    if not present:
        return []
    keys = list(dict.fromkeys(k for t in present for k in t["breakdowns"]))
    positive = present[0]["positive"]
    out = ["## Results per group", "",
           f"The `{split}` split broken down by the task's group columns (`task.breakdowns`): accuracy and F1 of "
           f"`{positive}` within each group. A post can be in several groups. Where a group's gold labels are all "
           f"one class its accuracy is a recall (of `{positive}`) or a specificity, and F1 is `–` when the group "
           "has neither a positive example nor a positive prediction.", ""]
    if gap_key:
        out += [f"Largest accuracy gap between `{gap_key}` groups (in `metrics/<system>.json` as "
                f"`{split}.group_gap`, so `dvc metrics diff` shows it):", ""]
        out += [_gap_line(name, (m or {}).get("group_gap")) for name, m in systems.items() if m] + [""]
    for key in keys:
        out += [f"### By {key}", "", group_table(tables, key), ""]
    return out + [_small_note(tables), ""]


def functional_section(suite: str, systems: Mapping[str, Optional[Mapping]],
                       tables: Mapping[str, Optional[Mapping]], info: Optional[Mapping],
                       heatmap: Optional[str]) -> List[str]:
    """## Functional tests: overall results beside the published reference rows, then accuracy per
    functionality, target identity and gold label, and each system's worst functionality."""
    present = {name: m for name, m in systems.items() if m}
    if not present:
        return []
    out = [f"## Functional tests ({suite})", "",
           "Every system scored each test case with its own decision rule (the fine-tuned and zero-shot models "
           "with the threshold fitted on their dev split); a case counts as `hateful` when the system gives it the "
           "label `task.functional_labels.hateful` maps to. Accuracy and macro-F1 are over hateful / non-hateful, "
           "as the HateCheck paper reports them.", "",
           "| system | n | accuracy | macro-F1 | worst functionality (accuracy) |", "|---|---:|---:|---:|---|"]
    for name, m in present.items():
        worst = m.get("worst_functionality") or {}
        worst_text = f"{worst['name']} ({worst['accuracy']:.2f})" if worst.get("name") else "–"
        out.append(f"| {name} | {m['n']} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {worst_text} |")
    out += [f"| *{system} (published, not run here)* | *3728* | *{acc:.3f}* | *{f1:.3f}* | |"
            for system, acc, f1 in REFERENCE]
    out += ["", f"Rows in italics are published results from {REFERENCE_SOURCE}, on HateCheck's 3,728 cases, for "
            "reference only.", ""]
    if heatmap:
        out += [f"![functional]({heatmap})", ""]
    gold = {name: e["gold"] for name, e in ((info or {}).get("functionalities") or {}).items()}
    shown = {name: f"{name} ({label})" for name, label in gold.items()}
    order = (info or {}).get("order") or None
    out += ["### Accuracy per functionality", "", group_table(tables, FUNCTIONALITY, order, shown), "",
            "### Accuracy per target identity", "", group_table(tables, TARGET), "",
            "### Accuracy per gold label", "", group_table(tables, "gold"), "", _small_note(tables), ""]
    return out


def stop_section(suite: str, systems: Mapping[str, Mapping[str, Mapping]], tables: Mapping[str, Optional[Mapping]],
                 info: Optional[Mapping], heatmap: Optional[str]) -> List[str]:
    """## Functional tests of a generation task: each system's (and decoding's) replies to the suite's cases, a stop
    counting as hateful. `systems`: {system: {decoding: metrics}} (`evaluation.score_suite_replies`); `tables`:
    {"<system> (<decoding>)": groups.json}. Functional accuracy and the worst functionality, then the stop rate per
    functionality (with what is expected of it), target identity and gold label."""
    if not any(systems.values()):
        return []
    out = [f"## Functional tests ({suite}): stop rate", "",
           "Every system answered the suite's cases (a seeded sample of each functionality, "
           "`eval.generation.functional`); a reply that is the stop message counts as treating the case as hateful. "
           "Expected: hateful cases stopped; non-hateful ones (counter-speech quoting or referencing hate, reclaimed "
           "slurs, negated hate, neutral and positive statements, abuse of non-protected targets) answered. "
           "Functional accuracy: the share of cases stopped iff hateful. The published HateCheck results (classifier "
           "accuracies) are not comparable and not shown.", "",
           "| system | decoding | n | functional accuracy | stop rate: hateful cases | stop rate: non-hateful cases "
           "(over-refusal) | worst functionality (gold: stop rate) |", "|---|---|---:|---:|---:|---:|---|"]
    for name, decodings in systems.items():
        for decoding, m in decodings.items():
            worst = m.get("worst_functionality") or {}
            worst_text = (f"{worst['name']} ({worst['gold']}: {worst['stop_rate']:.2f})" if worst.get("name")
                          else "–")
            rates = [("–" if m.get(k) is None else f"{m[k]:.2f}") for k in ("stop_rate_hateful",
                                                                            "stop_rate_non_hateful")]
            out.append(f"| {name} | {decoding} | {m['n']} | {m['functional_accuracy']:.3f} | {rates[0]} | "
                       f"{rates[1]} | {worst_text} |")
    out.append("")
    if heatmap:
        out += [f"![functional]({heatmap})", ""]
    gold = {name: e["gold"] for name, e in ((info or {}).get("functionalities") or {}).items()}
    shown = {name: f"{name} ({'should stop' if label == HATEFUL else 'should not stop'})"
             for name, label in gold.items()}
    order = [name for name in (info or {}).get("order") or [] if any(
        name in (t or {}).get("breakdowns", {}).get(FUNCTIONALITY, {}) for t in tables.values())] or None
    out += ["### Stop rate per functionality", "",
            group_table(tables, FUNCTIONALITY, order, shown, _stop_cell, "stop rate"), "",
            "### Stop rate per target identity", "", group_table(tables, TARGET, cell=_stop_cell,
                                                                 heading="stop rate"), "",
            "### Stop rate per gold label", "", group_table(tables, "gold", cell=_stop_cell, heading="stop rate"), "",
            _small_note(tables), ""]
    return out


def heatmap_data(tables: Mapping[str, Optional[Mapping]], order: Optional[Sequence[str]] = None):
    """(functionalities, systems, accuracy[functionality][system] or None) for the heatmap."""
    present = {name: t["breakdowns"].get(FUNCTIONALITY, {}) for name, t in tables.items() if t}
    if not present:
        return None
    rows = list(order) if order else list(dict.fromkeys(g for t in present.values() for g in t))
    values = [[(t.get(r) or {}).get("accuracy") for t in present.values()] for r in rows]
    return rows, list(present), values
