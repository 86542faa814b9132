"""The Lacoste et al. estimate and the per-stage measurement table."""
from __future__ import annotations

import json

import pytest

from hatetune import carbon, config


def test_stop_hate_preset_gives_the_published_1_17_kg():
    cfg = config.load(["carbon=stophate_a6000"])  # the conf/carbon preset, composed like `-S carbon=...`
    assert (cfg.carbon.device_power_w, cfg.carbon.pue, cfg.carbon.carbon_intensity_kg_per_kwh, cfg.carbon.hours) \
        == (300.0, 1.0, 0.432, 9.0)
    estimate = carbon.estimate_from_config(cfg.carbon, measured_hours=123.0)  # the preset's hours win
    assert estimate["energy_kwh"] == pytest.approx(2.7)
    assert round(estimate["emissions_kg"], 2) == 1.17
    assert estimate["hours_source"] == "config"


def test_estimate_scales_with_every_factor():
    base = carbon.lacoste_estimate(2.0, 100.0, 1.0, 0.5)["emissions_kg"]
    assert base == pytest.approx(0.1)
    assert carbon.lacoste_estimate(4.0, 100.0, 1.0, 0.5)["emissions_kg"] == pytest.approx(2 * base)
    assert carbon.lacoste_estimate(2.0, 100.0, 1.5, 0.5)["emissions_kg"] == pytest.approx(1.5 * base)
    assert carbon.lacoste_estimate(2.0, 100.0, 1.0, 0.25)["emissions_kg"] == pytest.approx(base / 2)


def test_default_hours_are_the_measured_stage_durations(tmp_path):
    cfg = config.load()
    assert cfg.carbon.hours is None
    for stage, seconds in [("train", 5400.0), ("evaluate", 1800.0), ("total", 999.0)]:
        (tmp_path / f"{stage}.json").write_text(json.dumps({"stage": stage, "duration_s": seconds}))
    measured = carbon.read_stage_measurements(tmp_path)
    assert sorted(measured) == ["evaluate", "train"]  # the report's own total.json is not a stage
    hours = sum(m["duration_s"] for m in measured.values()) / 3600
    estimate = carbon.estimate_from_config(cfg.carbon, hours)
    assert estimate["hours"] == 2.0 and estimate["hours_source"] == "measured stage durations"
    assert estimate["emissions_kg"] == pytest.approx(2.0 * cfg.carbon.device_power_w / 1000 * cfg.carbon.pue
                                                     * cfg.carbon.carbon_intensity_kg_per_kwh)


def test_negative_hours_are_a_config_error():
    with pytest.raises(config.ConfigError, match="carbon.hours"):
        config.load(["carbon.hours=-1"])


@pytest.mark.parametrize("code, hint", [("XXX", "ISO 3166-1 alpha-3"), ("usa", "did you mean 'USA'?"),
                                        ("US", "ISO 3166-1 alpha-3")])
def test_a_country_codecarbon_does_not_know_fails_naming_the_key(tmp_path, code, hint):
    from hatetune.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        with carbon.track_emissions("evaluate", code, tmp_path / "carbon.json"):
            raise AssertionError("the block must not run")
    assert err.value.field == "carbon.country_iso_code" and hint in str(err.value)
    assert "world average" in str(err.value) and not (tmp_path / "carbon.json").exists()
    carbon.check_country("FRA")  # known: no error
