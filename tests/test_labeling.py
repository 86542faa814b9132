"""The decision rule that evaluation fits and the service and the export read back: `labeling.decision_rule` finds
and checks it (one clear error per bad file), `apply_rule` is the decision, and the export's flip margin is the
distance to that decision's boundary."""
from __future__ import annotations

import json

import numpy as np
import pytest

from serve_support import RULE, serve_config, write_rule


@pytest.fixture
def cfg(tiny_model_dir, tmp_path):
    return serve_config(tiny_model_dir, None, tmp_path / "log.sqlite")  # the default: score mode, calibrated


def test_the_rule_is_read_only_when_the_config_calibrates(tmp_path, tiny_model_dir):
    from hatetune import labeling

    greedy = serve_config(tiny_model_dir, None, tmp_path / "log.sqlite", "eval.mode=greedy",
                          "eval.calibration.method=none")
    argmax = serve_config(tiny_model_dir, None, tmp_path / "log.sqlite", "eval.calibration.method=none")
    for c in (greedy, argmax):
        assert labeling.decision_rule(c, tmp_path / "absent.json") is None


def test_a_fitted_rule_is_found_for_its_adapter(cfg, tmp_path):
    from hatetune import labeling

    path = write_rule(tmp_path, "eval", tmp_path / "adapter")
    assert labeling.decision_rule(cfg, path, tmp_path / "adapter") == RULE
    with pytest.raises(Exception) as err:  # fitted for another adapter (or for the base alone): refused
        labeling.decision_rule(cfg, path, tmp_path / "other")
    assert f"this rule was fitted for adapter {tmp_path / 'adapter'} (its run.json), not for {tmp_path / 'other'}" \
        in str(err.value)
    with pytest.raises(Exception, match="not for the base model alone"):
        labeling.decision_rule(cfg, path, None)
    assert labeling.decision_rule(cfg, path, None, check_adapter=False) == RULE  # serve.calibration=<path>


@pytest.mark.parametrize("content, message", [
    (None, "field 'eval.calibration.method': no decision rule fitted on dev here: run the evaluate stage"),
    ("{not json", ": not a decision rule: not JSON (Expecting property name enclosed in double quotes, line 1)"),
    (json.dumps({**RULE, "labels": ["a", "b"]}), "field 'labels': the rule is for labels ['a', 'b'], not this "
                                                  "task's ['hate', 'not hate']"),
    (json.dumps({**RULE, "positive": "maybe"}), "field 'labels': the rule is for labels"),
    (json.dumps([1, 2]), "the rule is for labels list"),
    (json.dumps({**RULE, "temperature": 0}), "field 'temperature': must be a finite number > 0, got 0"),
    (json.dumps({**RULE, "threshold": "0.5"}), "field 'threshold': must be a finite number, got '0.5'"),
])
def test_a_bad_rule_file_is_one_clear_error(cfg, tmp_path, content, message):
    from hatetune import labeling
    from hatetune.errors import HatetuneError

    path = tmp_path / "calibration.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(HatetuneError) as err:
        labeling.decision_rule(cfg, path, None, check_adapter=False)
    assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)


def test_the_service_without_its_rule_fails_before_loading_the_model(cfg, tmp_path, monkeypatch):
    from hatetune import paths
    from hatetune.errors import HatetuneError
    from hatetune.serve.backends import TransformersBackend

    monkeypatch.chdir(tmp_path)  # no models/base/ here either: the rule is checked first
    with pytest.raises(HatetuneError) as err:
        TransformersBackend.load(cfg)
    assert str(err.value).startswith(f"{paths.calibration_file(paths.results_base(paths.ZEROSHOT))}, field "
                                     "'eval.calibration.method': no decision rule fitted on dev here")


def test_apply_rule_is_the_calibrated_decision():
    from hatetune import calibration, labeling

    log_probs = [[-1.0, -2.0], [-2.0, -1.5], [-3.0, -0.5]]
    run = labeling.apply_rule({"predicted": ["x"] * 3, "outputs": ["x"] * 3, "log_probs": log_probs}, RULE)
    p = calibration.probabilities(log_probs, RULE["temperature"])[:, 0]
    assert run["p_positive"] == pytest.approx(p.tolist())
    assert run["predicted"] == run["outputs"] == ["hate" if q >= RULE["threshold"] else "not hate" for q in p]
    assert run["predicted"] == ["hate", "hate", "not hate"]  # the argmax would say not hate for the second
    probs = labeling.label_probabilities(run, RULE["labels"])
    assert [d["hate"] for d in probs] == pytest.approx(p.tolist(), abs=1e-6)


@pytest.mark.parametrize("rule", [None, RULE, {**RULE, "labels": ["hate", "not hate", "other"], "threshold": 0.6}])
def test_the_flip_margin_is_the_distance_to_the_decision_boundary(rule):
    """Moving the positive label's log-likelihood by the margin (in the right direction) lands on the boundary;
    a little less keeps the label."""
    from hatetune import calibration
    from hatetune.export.verify import decision_margin

    labels = (rule or RULE)["labels"]
    rng = np.random.default_rng(0)
    for scores in rng.normal(-2, 1.5, size=(20, len(labels))):
        scores = scores.tolist()
        m = decision_margin(scores, labels, rule)

        def label(s):
            if rule is None:
                return labels[int(np.argmax(s))]
            return calibration.decide(calibration.probabilities([s], rule["temperature"]), labels, "hate",
                                      rule["threshold"])[0]

        before = label(scores)
        moved = [label([scores[0] + d, *scores[1:]]) for d in (-m * 0.999, m * 0.999)]
        assert moved == [before, before]
        if rule is not None and len(labels) == 2:
            flipped = [label([scores[0] + d, *scores[1:]]) for d in (-m * 1.001, m * 1.001)]
            assert before != flipped[0] or before != flipped[1]
