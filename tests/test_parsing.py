"""Label parsers: seed B's DynaHate regex and seed C's MHS substring order, exactly as the seeds behave."""
from __future__ import annotations

import pytest

from hatetune.errors import ConfigError
from hatetune.parsing import INVALID, get_parser, parse_dynahate, parse_mhs


@pytest.mark.parametrize("text, label", [
    ("hate", "hate"),
    ("not hate", "not hate"),
    ("Not Hate", "not hate"),
    ("NOT HATE.", "not hate"),
    ("nothate", "not hate"),          # \s* allows no space, as in seed B
    ("not   hate", "not hate"),
    ("'hate'", "hate"),
    ("The label is: hate", "hate"),
    ("I don't hate them", "hate"),    # first match wins; "don't hate" has no "not" -> hate (seed B's behaviour)
    ("hate, not hate", "hate"),       # first match
    ("not hate, hate", "not hate"),
    ("hateful", INVALID),             # \b after hate: no match inside a longer word
    ("whatever", INVALID),
    ("cannot hate", "hate"),          # "cannot" is not "not" at a word boundary
    ("", INVALID),
    ("I'm sorry", INVALID),
])
def test_dynahate_regex(text, label):
    assert parse_dynahate(text) == label


@pytest.mark.parametrize("text, label", [
    ("Hate", "Hate"),
    ("neutral", "Neutral"),
    ("SUPPORTIVE", "Supportive"),
    ("Hate / Neutral / Supportive", "Supportive"),  # order supportive -> hate -> neutral
    ("not hate, neutral", "Hate"),                  # substring search: "hate" before "neutral"
    ("hateful", "Hate"),                            # substring, not word
    ("I'd say neutral.", "Neutral"),
    ("Unknown", INVALID),
    ("", INVALID),
])
def test_mhs_substring_order(text, label):
    assert parse_mhs(text) == label


def test_parsers_return_the_task_spelling():
    parse = get_parser("mhs_substring", ["Hate", "Neutral", "Supportive"])
    assert parse("the answer is HATE") == "Hate"
    parse = get_parser("dynahate_regex", ["hate", "not hate"])
    assert [parse(t) for t in ["hate", "Not Hate.", "x"]] == ["hate", "not hate", INVALID]


def test_unknown_parser_and_mismatched_labels_are_config_errors():
    with pytest.raises(ConfigError, match="task.parser"):
        get_parser("stop_refusal", ["stop"])
    with pytest.raises(ConfigError, match="task.labels.names"):
        get_parser("dynahate_regex", ["Hate", "Neutral", "Supportive"])
