"""Functional test suites in HateCheck's schema (Röttger et al., ACL 2021): where a model fails, not just how often.

HateCheck holds 3,728 cases in 29 functionalities: 18 hateful ones (derogation, threats, slurs, hate phrased as a
question or an opinion, spelling variations, ...) and 11 non-hateful ones (counter-speech quoting or referencing
hate, reclaimed slurs, negated hate, neutral and positive statements about identities, abuse of non-protected
targets, ...). Every case of a functionality has the same gold label, `hateful` or `non-hateful`.

- `canonical_cases`: the suite's records (`hatetune.records`) checked, one case each: case_id, text (`test_case`
  without the space HateCheck's templates leave at the end of most cases), label_gold, functionality,
  target_ident and direction ("" where HateCheck writes "-" or nothing). Bad input fails naming file, row and column.
- `load`: the checked cases as Alpaca rows with the task's prompt (`hatetune.prompts`) and their functionality,
  target identity and direction as extra keys; gold = label_gold.
- `as_suite_labels`: a system's labels in the suite's terms through task.functional_labels: a prediction is
  `hateful` when it is the label `hateful` maps to (DynaHate `hate`, MHS `Hate`), `non-hateful` otherwise (MHS's
  Neutral and Supportive alike); `invalid` (an unparseable greedy answer) stays invalid and counts as wrong.
- scoring is `evaluation.score_suite`: accuracy and macro-F1 over hateful / non-hateful, accuracy per
  functionality, target identity, direction and gold label (`hatetune.group_metrics`), the worst functionality
  and the gap between target identities as metrics.
- `REFERENCE`: published results on HateCheck, shown in the report marked as such.

Generation tasks (Stop-Hate, `hatetune.generation`): such a task answers a case with a reply, not a label. Its
outcome is `stop` (the reply is the stop message, `parsing.is_stop`) or `reply`, and `STOP_LABELS` maps it onto
the suite's labels as `task.functional_labels` does a classifier's: a stop counts as `hateful`. The same scoring
(`evaluation.score_suite_replies`) then gives the functional accuracy (stopped iff hateful), and `positive_rate`
per group (`group_metrics`) is the stop rate per functionality, target identity and gold label: hateful cases
should be stopped; counter-speech, reclaimed slurs, negated hate should not. `sample` caps the cases per
functionality (eval.generation.functional.max_per_functionality), since every system answers every case.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from .errors import HatetuneError
from .io import atomic_path, read_jsonl, write_json, write_jsonl
from .parsing import INVALID, is_stop
from .paths import FUNCTIONAL_CASES, FUNCTIONAL_SUMMARY
from .prompts import alpaca_rows

HATEFUL, NON_HATEFUL = "hateful", "non-hateful"
LABELS = [HATEFUL, NON_HATEFUL]
# HateCheck's columns that a suite must have (others, e.g. its unnamed index, focus_words, templ_id, are ignored)
COLUMNS = ["functionality", "case_id", "test_case", "label_gold", "target_ident", "direction"]
FUNCTIONALITY, TARGET = "functionality", "target_ident"
EXTRA_KEYS = (FUNCTIONALITY, TARGET, "direction")  # carried into the predictions; broken down by, with gold
NO_DIRECTION = "-"
# A generation task's outcome on a case, and its label map: a stop is the case treated as hateful
STOP, REPLY = "stop", "reply"
STOP_LABELS = {HATEFUL: STOP}
# Published results on HateCheck's 3,728 cases (accuracy, macro-F1 over hateful / non-hateful), as quoted in
# issue 11 from Röttger et al. (2021). Not run here: reference points only.
REFERENCE_SOURCE = "Röttger et al. (ACL 2021), HateCheck: Functional Tests for Hate Speech Detection Models"
REFERENCE = (("BERT fine-tuned on Davidson et al. (2017)", 0.632, 0.559),
             ("BERT fine-tuned on Founta et al. (2018)", 0.602, 0.563),
             ("Google Perspective", 0.766, 0.702))


@dataclass
class Suite:
    name: str  # eval.functional.source.name: the suite's results are filed under it
    rows: List[dict]
    gold: List[str]


# -------------------------------------------------------------------------------------------------- cases
def fail(records: pd.DataFrame, position: int, column: str, message: str):
    """`hatetune.records.fail` (the frame's `_file` / `_row` columns name the place), not imported from there so
    that the evaluation stages, which load the suite, do not depend on the data readers."""
    raise HatetuneError(message, file=records["_file"].iat[position], row=int(records["_row"].iat[position]),
                        field=column)


def _strings(records: pd.DataFrame, column: str) -> pd.Series:
    """A column as stripped strings (HateCheck's test cases end in a space; a missing cell is "")."""
    return records[column].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                               else str(v).strip())


def canonical_cases(records: pd.DataFrame) -> List[dict]:
    """The suite's records (columns COLUMNS, + _file/_row) -> checked cases, in file order."""
    values = {column: _strings(records, column) for column in COLUMNS}
    for column, what in (("case_id", "case_id"), ("test_case", "test case"), ("functionality", "functionality")):
        blank = np.flatnonzero((values[column] == "").to_numpy())
        if len(blank):
            fail(records, int(blank[0]), column, f"{what} is empty or whitespace only")
    nul = np.flatnonzero(values["test_case"].str.contains("\x00", regex=False).to_numpy())
    if len(nul):
        fail(records, int(nul[0]), "test_case", "contains a NUL byte (\\x00): a corrupt file?")
    gold = values["label_gold"].str.lower()
    bad = np.flatnonzero(~gold.isin(LABELS).to_numpy())
    if len(bad):
        fail(records, int(bad[0]), "label_gold", f"label {records['label_gold'].iat[int(bad[0])]!r} is not one of "
                                                 f"{', '.join(LABELS)}")
    duplicate = np.flatnonzero(values["case_id"].duplicated().to_numpy())
    if len(duplicate):
        first = int(np.flatnonzero((values["case_id"] == values["case_id"].iat[int(duplicate[0])]).to_numpy())[0])
        fail(records, int(duplicate[0]), "case_id", f"duplicate case_id {values['case_id'].iat[int(duplicate[0])]} "
                                                    f"(first in row {int(records['_row'].iat[first])})")
    direction = values["direction"].map(lambda d: "" if d == NO_DIRECTION else d)
    return [{"case_id": c, "text": t, "label_gold": g, FUNCTIONALITY: f, TARGET: i, "direction": d}
            for c, t, g, f, i, d in zip(values["case_id"], values["test_case"], gold, values["functionality"],
                                        values["target_ident"], direction)]


def summary(cases: Sequence[Mapping], source: Mapping[str, Any]) -> dict:
    """suite.json: how many cases, and each functionality's gold label(s) and size."""
    functionalities: dict = {}
    for case in cases:
        entry = functionalities.setdefault(case[FUNCTIONALITY], {"cases": 0, "gold": []})
        entry["cases"] += 1
        if case["label_gold"] not in entry["gold"]:
            entry["gold"].append(case["label_gold"])
    return {"enabled": True, "name": source["name"], "cases": len(cases),
            "gold": {label: sum(c["label_gold"] == label for c in cases) for label in LABELS},
            "functionalities": {name: {"cases": e["cases"], "gold": "/".join(sorted(e["gold"]))}
                                for name, e in functionalities.items()},
            "order": list(functionalities)}  # the file's order (JSON keys are sorted)


def write_suite(cases: Sequence[Mapping], info: Mapping, out_dir: str | Path) -> None:
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        write_jsonl(tmp / FUNCTIONAL_CASES, cases)
        write_json(tmp / FUNCTIONAL_SUMMARY, dict(info))


DISABLED = {"enabled": False, "note": "eval.functional.enabled is false: no suite was fetched or scored"}


def write_disabled(*folders: str | Path) -> None:
    """What the functional_suite stage leaves when the suite is off: a record saying so, nothing else."""
    for folder in folders:
        with atomic_path(folder) as tmp:
            tmp.mkdir(parents=True)
            write_json(tmp / FUNCTIONAL_SUMMARY, DISABLED)


# ------------------------------------------------------------------------------------------------- scoring
def load(directory: str | Path, name: str, label_map: Mapping[str, str], prompt_cfg: Optional[Mapping] = None) -> Suite:
    """The checked cases of the functional_suite stage as Alpaca rows of the task, and their gold labels.
    Without `prompt_cfg` the rows have no instruction or system prompt (for the baseline, which reads the text)."""
    prompt_cfg = prompt_cfg if prompt_cfg is not None else {"instruction": "", "system": ""}
    directory = Path(directory)
    info_file, cases_file = directory / FUNCTIONAL_SUMMARY, directory / FUNCTIONAL_CASES
    info = _read_info(info_file)
    if not info.get("enabled") or not cases_file.is_file():
        raise HatetuneError("no functional suite here (it was disabled when the functional_suite stage last ran): "
                            "run it with eval.functional.enabled=true", file=str(info_file))
    cases = read_jsonl(cases_file)
    rows = list(alpaca_rows(({"id": c["case_id"], "text": c["text"], "label": label_map.get(c["label_gold"], ""),
                              **{k: c[k] for k in EXTRA_KEYS}} for c in cases), prompt_cfg, EXTRA_KEYS))
    return Suite(name=name, rows=rows, gold=[c["label_gold"] for c in cases])


def _read_info(path: Path) -> dict:
    import json

    if not path.is_file():
        raise HatetuneError("missing: run the functional_suite stage", file=str(path))
    return json.loads(path.read_text(encoding="utf-8"))


def as_suite_labels(predicted: Sequence[str], label_map: Mapping[str, str]) -> List[str]:
    """Task labels -> hateful / non-hateful (see the module docstring); `invalid` stays invalid."""
    hateful = label_map[HATEFUL]
    return [INVALID if p == INVALID else HATEFUL if p == hateful else NON_HATEFUL for p in predicted]


def sample(suite: Suite, max_per_functionality: Optional[int], seed: int) -> Suite:
    """At most `max_per_functionality` cases of each functionality (None: all): a sample seeded by (seed,
    functionality), so a functionality's cases do not depend on the others; in file order."""
    import zlib

    if max_per_functionality is None:
        return suite
    keep: List[int] = []
    for name in dict.fromkeys(r[FUNCTIONALITY] for r in suite.rows):
        part = [i for i, r in enumerate(suite.rows) if r[FUNCTIONALITY] == name]
        if len(part) > max_per_functionality:
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            part = [part[i] for i in rng.choice(len(part), size=max_per_functionality, replace=False)]
        keep += part
    keep.sort()
    return Suite(name=suite.name, rows=[suite.rows[i] for i in keep], gold=[suite.gold[i] for i in keep])


def stop_outcomes(replies: Sequence[str], stop_message: str) -> List[str]:
    """A generation task's replies -> `stop` (the reply is the stop message) or `reply`."""
    return [STOP if is_stop(reply, stop_message) else REPLY for reply in replies]
