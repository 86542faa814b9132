"""Energy and emissions: codecarbon's offline tracker around a stage (measured), written to metrics/carbon/.

The tracker never touches the network (`OfflineEmissionsTracker` with a configured country). On a machine
without RAPL / GPU counters codecarbon estimates CPU power from load, which the written `tracking` fields say.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Iterator, Optional

from .errors import ConfigError
from .io import write_json

# The fields of codecarbon's EmissionsData kept in metrics/carbon/<stage>.json (units in the names).
FIELDS = {"duration": "duration_s", "energy_consumed": "energy_kwh", "emissions": "emissions_kg",
          "cpu_energy": "cpu_energy_kwh", "gpu_energy": "gpu_energy_kwh", "ram_energy": "ram_energy_kwh",
          "cpu_power": "cpu_power_w", "gpu_power": "gpu_power_w", "ram_power": "ram_power_w",
          "country_iso_code": "country_iso_code", "cpu_model": "cpu_model", "gpu_model": "gpu_model",
          "cpu_count": "cpu_count", "gpu_count": "gpu_count", "pue": "pue", "tracking_mode": "tracking_mode",
          "codecarbon_version": "codecarbon_version"}


def check_country(country_iso_code: str) -> None:
    """Fail naming `carbon.country_iso_code` unless codecarbon's energy-mix table has the country: codecarbon
    itself falls back to the world average, silently, for a code it does not know."""
    from codecarbon.input import DataSource

    known = DataSource().get_global_energy_mix_data()
    if country_iso_code not in known:
        upper = str(country_iso_code).upper()
        hint = f"; did you mean {upper!r}?" if upper in known else " (ISO 3166-1 alpha-3, e.g. USA, FRA, DEU)"
        raise ConfigError(f"{country_iso_code!r} is not a country in codecarbon's table of {len(known)} energy "
                          f"mixes, so emissions would silently use the world average{hint}",
                          field="carbon.country_iso_code")


@contextlib.contextmanager
def track_emissions(stage: str, country_iso_code: str, out_path: str | Path, enabled: bool = True) -> Iterator[dict]:
    """Measure energy and emissions of the block; on success write them to `out_path`.

    Yields the dict that is filled in (and written) when the block ends. Nothing is written if the block
    raises, so a failed stage leaves no half-true measurement behind.
    """
    result: dict = {}
    if not enabled:
        yield result
        return
    from codecarbon import OfflineEmissionsTracker

    check_country(country_iso_code)
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    tracker = OfflineEmissionsTracker(country_iso_code=country_iso_code, project_name=f"hatetune-{stage}",
                                      save_to_file=False, log_level="error", allow_multiple_runs=True)
    tracker.start()
    try:
        yield result
    except BaseException:
        tracker.stop()
        raise
    tracker.stop()
    data = dataclasses.asdict(tracker.final_emissions_data)
    result.update({"stage": stage, **{name: data.get(key) for key, name in FIELDS.items()}})
    write_json(out_path, result)


# ------------------------------------------------------------------------------ estimate and per-stage table
def lacoste_estimate(hours: float, device_power_w: float, pue: float, carbon_intensity_kg_per_kwh: float) -> dict:
    """Lacoste et al. (2019), "Quantifying the Carbon Emissions of Machine Learning": energy = hours x device
    power x PUE, emissions = energy x carbon intensity of the grid. Seed A's numbers: 9 h x 0.3 kW x 1 x 0.432
    = 1.17 kg CO2eq."""
    energy_kwh = hours * device_power_w / 1000 * pue
    return {"hours": round(hours, 6), "device_power_w": device_power_w, "pue": pue,
            "carbon_intensity_kg_per_kwh": carbon_intensity_kg_per_kwh, "energy_kwh": round(energy_kwh, 6),
            "emissions_kg": round(energy_kwh * carbon_intensity_kg_per_kwh, 6)}


def estimate_from_config(carbon_cfg, measured_hours: Optional[float] = None) -> dict:
    """The estimate for `cfg.carbon`: its `hours`, else `measured_hours` (the stages' measured duration)."""
    hours = carbon_cfg.hours if carbon_cfg.hours is not None else (measured_hours or 0.0)
    result = lacoste_estimate(hours, carbon_cfg.device_power_w, carbon_cfg.pue,
                              carbon_cfg.carbon_intensity_kg_per_kwh)
    result.update({"device": carbon_cfg.device, "hours_source": "config" if carbon_cfg.hours is not None
                   else "measured stage durations"})
    return result


def read_stage_measurements(carbon_dir: str | Path, exclude: tuple = ("total",)) -> dict:
    """{stage: codecarbon measurement} of every metrics/carbon/<stage>.json present, by stage name."""
    import json

    found = {}
    for path in sorted(Path(carbon_dir).glob("*.json")):
        if path.stem not in exclude:
            found[path.stem] = json.loads(path.read_text(encoding="utf-8"))
    return found
