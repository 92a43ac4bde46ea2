"""Ensemble weights and per-condition temperatures: the file ``rsna2024 evaluate`` fits and writes, and
``rsna2024 predict --weights`` reads.

The file is JSON::

    {"version": 1,
     "runs": {"split_spinal_resnet18": 1.0, "global_resnet18": 0.5},
     "temperature": {"spinal_canal_stenosis": 1.2, ...}}

``runs`` maps a run folder's name (``runs/<name>``) to a weight >= 0; ``temperature`` maps a condition of
:data:`rsna2024.constants.CONDITIONS` to a temperature > 0 (absent: 1). Blending is a weighted mean of the runs'
probabilities per row id, over the runs that predict that row, then per condition ``p ** (1 / T)`` renormalised.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rsna2024.constants import CONDITIONS, PRED_COLUMNS
from rsna2024.errors import RsnaError
from rsna2024.utils.io import atomic_write_text

VERSION = 1


class WeightsError(RsnaError):
    """An ensemble weights file that cannot be used; the message names the file and the key."""


@dataclass
class EnsembleWeights:
    """Per-run weights (run folder name -> weight) and per-condition temperatures (condition -> T)."""

    runs: dict[str, float] = field(default_factory=dict)
    temperature: dict[str, float] = field(default_factory=dict)

    def weight(self, run: str) -> float:
        """The weight of run ``run`` (its folder name); a run the file does not name weighs 0."""
        return float(self.runs.get(run, 0.0))

    def to_json(self) -> str:
        return json.dumps({"version": VERSION, "runs": self.runs, "temperature": self.temperature}, indent=2)


def _number(value, where: str, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WeightsError(f"{where}: expected a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise WeightsError(f"{where}: must be {'> 0' if positive else '>= 0'}, got {value}")
    return float(value)


def parse_weights(data: Mapping, source: str = "weights") -> EnsembleWeights:
    """Validate a loaded weights mapping; errors name ``source`` and the offending key."""
    if not isinstance(data, Mapping):
        raise WeightsError(f"{source}: expected a JSON object")
    unknown = set(data) - {"version", "runs", "temperature"}
    if unknown:
        raise WeightsError(f"{source}: unknown key(s) {sorted(unknown)}; valid: version, runs, temperature")
    if data.get("version", VERSION) != VERSION:
        raise WeightsError(f"{source}: version {data.get('version')!r} is not {VERSION}")
    runs = data.get("runs", {})
    temps = data.get("temperature", {})
    if not isinstance(runs, Mapping) or not isinstance(temps, Mapping):
        raise WeightsError(f"{source}: 'runs' and 'temperature' must be JSON objects")
    out = EnsembleWeights(
        runs={str(k): _number(v, f"{source}: runs.{k}", positive=False) for k, v in runs.items()},
        temperature={str(k): _number(v, f"{source}: temperature.{k}", positive=True) for k, v in temps.items()})
    bad = sorted(set(out.temperature) - set(CONDITIONS))
    if bad:
        raise WeightsError(f"{source}: temperature for unknown condition(s) {bad}; valid: {', '.join(CONDITIONS)}")
    if out.runs and sum(out.runs.values()) <= 0:
        raise WeightsError(f"{source}: every run weight is 0")
    return out


def load_weights(path: str | Path) -> EnsembleWeights:
    """Read and validate a weights file written by :func:`save_weights`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{path}: not a JSON weights file ({exc})") from None
    return parse_weights(data, str(path))


def save_weights(weights: EnsembleWeights, path: str | Path) -> Path:
    """Write ``weights`` atomically (validated first)."""
    parse_weights(json.loads(weights.to_json()), str(path))
    return atomic_write_text(path, weights.to_json() + "\n")


def condition_of(row_ids: pd.Series) -> pd.Series:
    """The condition part of ``{study}_{condition}_{level}`` row ids."""
    return row_ids.str.split("_", n=1).str[1].str.rsplit("_", n=2).str[0]


def temper(probs: np.ndarray, t) -> np.ndarray:
    """``p ** (1 / t)`` of an (n, 3) array, rows renormalised; ``t`` a number or one per row. T > 1 flattens
    the rows (less confident), T < 1 sharpens them."""
    t = np.asarray(t, dtype=float)
    p = np.clip(np.asarray(probs, dtype=float), 1e-15, 1.0) ** (1.0 / (t[:, None] if t.ndim else t))
    return p / p.sum(axis=1, keepdims=True)


def apply_temperature(table: pd.DataFrame, temperature: Mapping[str, float]) -> pd.DataFrame:
    """Per condition ``p ** (1 / T)`` (:func:`temper`), rows renormalised; other columns kept."""
    out = table.copy()
    if not temperature:
        return out
    cols = list(PRED_COLUMNS)
    t = condition_of(out["row_id"]).map(lambda c: temperature.get(c, 1.0)).to_numpy(float)
    out[cols] = temper(out[cols].to_numpy(float), t)
    return out


def blend(tables: Mapping[str, pd.DataFrame], weights: EnsembleWeights | None = None) -> pd.DataFrame:
    """Weighted mean of submission-format tables (run name -> table with ``row_id`` and the three columns) per
    row id over the runs holding it (equal weights without ``weights``; runs weighted 0 drop out), then the
    temperatures; rows sum to 1. Returns ``row_id`` and the three columns, sorted by row id."""
    cols = list(PRED_COLUMNS)
    parts = []
    for name, table in tables.items():
        w = 1.0 if weights is None or not weights.runs else weights.weight(name)
        if w > 0:
            parts.append(table[["row_id", *cols]].assign(_w=w))
    if not parts:
        raise WeightsError(f"no run to blend: every run among {sorted(tables)} has weight 0")
    both = pd.concat(parts, ignore_index=True)
    both[cols] = both[cols].mul(both["_w"], axis=0)
    sums = both.groupby("row_id")[[*cols, "_w"]].sum()
    out = sums[cols].div(sums["_w"], axis=0)
    out = out.div(out.sum(axis=1), axis=0).reset_index()
    if weights is not None:
        out = apply_temperature(out, weights.temperature)
    return out.sort_values("row_id", ignore_index=True)
