"""Small synthetic datasets in the real upstream schemas (never copied from the mirror; texts are neutral).

DynaHate: the 12 columns of the upstream CSV, with original/perturbation pairs whose `acl.id.matched` point at
each other. Measuring Hate Speech: one row per (comment_id, annotator_id) with hate_speech_score and target_*
columns, as the Hub dataset has them. HateCheck: test_suite_cases.csv's 13 columns and 29 functionalities.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

DYNAHATE_COLUMNS = ["acl.id", "X1", "text", "label", "type", "target", "level", "split", "round.base", "annotator",
                    "round", "acl.id.matched"]
# DynaHate's hate types and target codes as upstream writes them (several targets joined by ", ").
HATE_TYPES = ["derogation", "animosity", "dehumanization", "threatening", "support"]
TARGETS = ["wom", "bla", "bla, jew", "mus", "gay.wom"]
MHS_TARGETS = ["target_race", "target_religion", "target_origin", "target_gender", "target_sexuality", "target_age",
               "target_disability"]
# Scores covering every bin and both boundaries (-1.0 and 0.5 are Neutral).
MHS_SCORES = [-2.3, -1.0001, -1.0, -0.4, 0.0, 0.5, 0.5001, 1.7]


def dynahate_rows(n_single: int = 24, n_pairs: int = 12, splits: Sequence[str] = ("dev",)) -> list[dict]:
    """Round-1 originals without a partner, then round-2 original/perturbation pairs (the perturbation flips
    the label, as in DynaHate). `splits` are cycled over the rows for the upstream `split` column."""
    rows = []

    def add(i: int, text: str, label: str, level: str, round_: str, matched: str = "") -> None:
        hate_type, target = HATE_TYPES[i % len(HATE_TYPES)], TARGETS[i % len(TARGETS)]
        rows.append({"acl.id": f"acl{10000 + i}", "X1": str(i + 1), "text": text, "label": label,
                     "type": "notgiven" if round_ == "1" else ("none" if label == "nothate" else hate_type),
                     "target": "notgiven" if round_ == "1" else ("none" if label == "nothate" else target),
                     "level": level, "split": splits[i % len(splits)], "round.base": round_[0],
                     "annotator": f"ann{i % 5}", "round": round_, "acl.id.matched": matched})

    for i in range(n_single):
        add(i, f"single post number {i} about group {i % 3}", "hate" if i % 2 else "nothate", "original", "1")
    for k in range(n_pairs):
        a, b = n_single + 2 * k, n_single + 2 * k + 1
        label = "hate" if k % 2 else "nothate"
        flipped = "nothate" if label == "hate" else "hate"
        add(a, f"original post {k}, with a comma", label, "original", "2a", f"acl{10000 + b}")
        add(b, f"perturbed post {k}\nspanning two lines", flipped, "perturbation", "2b", f"acl{10000 + a}")
    return rows


def write_csv(path: Path, rows: list[dict], columns: Optional[Sequence[str]] = None, delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(columns or rows[0].keys())
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter=delimiter, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_dynahate(path: Path, rows: Optional[list[dict]] = None, **kw) -> Path:
    return write_csv(path, rows if rows is not None else dynahate_rows(**kw), DYNAHATE_COLUMNS)


def mhs_rows(n_comments: int = 40, annotators: int = 3, varying: bool = False) -> list[dict]:
    """`annotators` rows per comment; the score is the comment's unless `varying` (then it differs per row)."""
    rows = []
    for c in range(n_comments):
        base = MHS_SCORES[c % len(MHS_SCORES)]
        for a in range(annotators):
            score = base + (0.1 * a if varying else 0.0)
            # race, religion, gender: every annotator agrees; origin: one annotator of three (not a majority);
            # age: two of three (a majority); the others never
            rows.append({"comment_id": 20000 + c, "annotator_id": 100 + (c + a) % 7,
                         "text": f"comment {c} on a topic, 'quoted'", "hate_speech_score": score,
                         "sentiment": float(a % 5), "target_race": c % 2 == 0, "target_religion": c % 3 == 0,
                         "target_origin": c % 4 == 0 and a == 0, "target_gender": c % 5 == 0,
                         "target_sexuality": False, "target_age": c % 4 == 1 and a < 2, "target_disability": False})
    return rows


def write_mhs(path: Path, rows: Optional[list[dict]] = None, **kw) -> Path:
    """Parquet (as the Hub serves it) or CSV, by the suffix of `path`."""
    import pandas as pd

    rows = rows if rows is not None else mhs_rows(**kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path, index=False)
    else:
        write_csv(path, rows)
    return path


# HateCheck (Röttger et al. 2021): the 29 functionalities of test_suite_cases.csv in file order, 11 of them
# non-hateful (`_nh`), the seven target identities, and its 13 columns (the first one unnamed: pandas' index).
HATECHECK_FUNCTIONALITIES = [
    "derog_neg_emote_h", "derog_neg_attrib_h", "derog_dehum_h", "derog_impl_h", "threat_dir_h", "threat_norm_h",
    "slur_h", "slur_homonym_nh", "slur_reclaimed_nh", "profanity_h", "profanity_nh", "ref_subs_clause_h",
    "ref_subs_sent_h", "negate_pos_h", "negate_neg_nh", "phrase_question_h", "phrase_opinion_h", "ident_neutral_nh",
    "ident_pos_nh", "counter_quote_nh", "counter_ref_nh", "target_obj_nh", "target_indiv_nh", "target_group_nh",
    "spell_char_swap_h", "spell_char_del_h", "spell_space_del_h", "spell_space_add_h", "spell_leet_h"]
HATECHECK_IDENTITIES = ["women", "trans people", "gay people", "black people", "disabled people", "Muslims",
                        "immigrants"]
HATECHECK_COLUMNS = ["", "functionality", "case_id", "test_case", "label_gold", "target_ident", "direction",
                     "focus_words", "focus_lemma", "ref_case_id", "ref_templ_id", "templ_id", "case_templ"]
NO_IDENTITY = {"profanity_nh", "target_obj_nh", "target_indiv_nh", "target_group_nh"}  # target_ident empty


def hatecheck_rows(per_functionality: int = 7) -> list[dict]:
    """`per_functionality` cases of each functionality, in HateCheck's schema: gold label from the `_h` / `_nh`
    suffix, identities cycled (none for the four functionalities that have none), direction general/directed for
    hateful cases and "-" otherwise, and the trailing space every HateCheck test case has. Texts are neutral."""
    rows = []
    for functionality in HATECHECK_FUNCTIONALITIES:
        hateful = functionality.endswith("_h")
        for k in range(per_functionality):
            identity = "" if functionality in NO_IDENTITY else HATECHECK_IDENTITIES[k % len(HATECHECK_IDENTITIES)]
            index = len(rows)
            rows.append({"": str(index), "functionality": functionality, "case_id": str(index + 1),
                         "test_case": f"Case {k} of {functionality} about {identity or 'nobody'}. ",
                         "label_gold": "hateful" if hateful else "non-hateful", "target_ident": identity,
                         "direction": ("directed" if k % 3 == 0 else "general") if hateful else "-",
                         "focus_words": "word", "focus_lemma": "word", "ref_case_id": "", "ref_templ_id": "",
                         "templ_id": str(1 + index // 7),
                         "case_templ": f"Case {k} of {functionality} about [IDENTITY_P]. "})
    return rows


def write_hatecheck(path: Path, rows: Optional[list[dict]] = None, **kw) -> Path:
    """test_suite_cases.csv as upstream writes it: CRLF line ends, an unnamed first column."""
    rows = rows if rows is not None else hatecheck_rows(**kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HATECHECK_COLUMNS, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
    return path
