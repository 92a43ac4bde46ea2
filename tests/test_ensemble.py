"""The ensemble weights file and blending (``rsna2024.inference.ensemble``): weighted means by hand, a run weighted 0
drops out, temperatures renormalise, the file round-trips, and a bad file's error names the file and the key."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rsna2024.constants import PRED_COLUMNS
from rsna2024.inference.ensemble import (
    EnsembleWeights,
    WeightsError,
    apply_temperature,
    blend,
    condition_of,
    load_weights,
    save_weights,
    temper,
)

SPINAL, FORAMEN = "7_spinal_canal_stenosis_l1_l2", "7_left_neural_foraminal_narrowing_l4_l5"


def table(rows: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([(r, *p) for r, p in rows.items()], columns=["row_id", *PRED_COLUMNS])


def values(out: pd.DataFrame, row_id: str) -> np.ndarray:
    return out.set_index("row_id").loc[row_id, list(PRED_COLUMNS)].to_numpy(float)


def test_blend_weighted_mean_by_hand():
    a = table({SPINAL: (0.6, 0.3, 0.1), FORAMEN: (0.2, 0.2, 0.6)})
    b = table({SPINAL: (0.0, 0.6, 0.4)})  # a split model: predicts the spinal row only
    out = blend({"a": a, "b": b}, EnsembleWeights(runs={"a": 1.0, "b": 3.0}))
    assert out["row_id"].tolist() == sorted([SPINAL, FORAMEN])
    # spinal: (1 * a + 3 * b) / 4; the foraminal row only a predicts: a's values
    np.testing.assert_allclose(values(out, SPINAL), [(0.6 + 0) / 4, (0.3 + 1.8) / 4, (0.1 + 1.2) / 4])
    np.testing.assert_allclose(values(out, FORAMEN), [0.2, 0.2, 0.6])
    # no weights: the plain mean; an empty runs map also means equal weights
    np.testing.assert_allclose(values(blend({"a": a, "b": b}), SPINAL), [0.3, 0.45, 0.25])
    np.testing.assert_allclose(values(blend({"a": a, "b": b}, EnsembleWeights()), SPINAL), [0.3, 0.45, 0.25])
    # rows are renormalised after the mean
    c = table({SPINAL: (2.0, 1.0, 1.0)})
    np.testing.assert_allclose(values(blend({"c": c}), SPINAL), [0.5, 0.25, 0.25])


def test_zero_weight_drops_a_run():
    a = table({SPINAL: (0.6, 0.3, 0.1), FORAMEN: (0.2, 0.2, 0.6)})
    b = table({SPINAL: (0.0, 0.6, 0.4), FORAMEN: (0.9, 0.05, 0.05)})
    out = blend({"a": a, "b": b}, EnsembleWeights(runs={"a": 0.0, "b": 2.0}))
    np.testing.assert_allclose(values(out, SPINAL), [0.0, 0.6, 0.4])
    # a run the file does not name weighs 0 as well
    out = blend({"a": a, "b": b}, EnsembleWeights(runs={"a": 1.0}))
    np.testing.assert_allclose(values(out, FORAMEN), [0.2, 0.2, 0.6])
    assert EnsembleWeights(runs={"a": 1.0}).weight("b") == 0.0
    with pytest.raises(WeightsError, match=r"every run among \['a', 'b'\] has weight 0"):
        blend({"a": a, "b": b}, EnsembleWeights(runs={"c": 1.0}))


def test_temperature_renormalises_per_condition():
    t = table({SPINAL: (0.6, 0.3, 0.1), FORAMEN: (0.2, 0.2, 0.6)})
    out = apply_temperature(t, {"spinal_canal_stenosis": 2.0})
    root = np.sqrt([0.6, 0.3, 0.1])
    np.testing.assert_allclose(values(out, SPINAL), root / root.sum())
    np.testing.assert_allclose(values(out, FORAMEN), [0.2, 0.2, 0.6])  # no temperature for it: T = 1
    np.testing.assert_allclose(out[list(PRED_COLUMNS)].sum(axis=1), 1.0)
    # T < 1 sharpens: p ** 2 renormalised; blend applies the file's temperatures after the mean
    sharp = blend({"a": t}, EnsembleWeights(runs={"a": 1.0}, temperature={"left_neural_foraminal_narrowing": 0.5}))
    np.testing.assert_allclose(values(sharp, FORAMEN), np.array([0.04, 0.04, 0.36]) / 0.44)
    np.testing.assert_allclose(temper(np.array([[0.5, 0.5, 0.0]]), 1.0), [[0.5, 0.5, 1e-15]], atol=1e-14)
    assert condition_of(pd.Series([SPINAL, FORAMEN])).tolist() == ["spinal_canal_stenosis",
                                                                  "left_neural_foraminal_narrowing"]


def test_weights_file_round_trips(tmp_path):
    weights = EnsembleWeights(runs={"split_spinal": 0.25, "global": 0.75}, temperature={"spinal_canal_stenosis": 1.3})
    path = save_weights(weights, tmp_path / "sub" / "w.json")
    assert load_weights(path) == weights
    assert json.loads(path.read_text()) == {"version": 1, "runs": weights.runs, "temperature": weights.temperature}


@pytest.mark.parametrize("content, message", [
    ({"runs": {"a": -1}}, r"runs\.a: must be >= 0, got -1"),
    ({"runs": {"a": "1"}}, r"runs\.a: expected a number, got '1'"),
    ({"runs": {"a": True}}, r"runs\.a: expected a number"),
    ({"temperature": {"spinal_canal_stenosis": 0}}, r"temperature\.spinal_canal_stenosis: must be > 0"),
    ({"temperature": {"spinal": 1.2}}, r"temperature for unknown condition\(s\) \['spinal'\]"),
    ({"runs": {"a": 1}, "weights": {}}, r"unknown key\(s\) \['weights'\]"),
    ({"version": 2}, r"version 2 is not 1"),
    ({"runs": [1, 2]}, r"'runs' and 'temperature' must be JSON objects"),
    ({"runs": {"a": 0, "b": 0}}, r"every run weight is 0"),
    ([1, 2], r"expected a JSON object"),
])
def test_bad_weights_file_names_file_and_key(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(WeightsError, match=message) as info:
        load_weights(path)
    assert str(info.value).startswith(str(path))


def test_unreadable_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        load_weights(tmp_path / "absent.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(WeightsError, match=r"x\.json: not a JSON weights file"):
        load_weights(tmp_path / "x.json")
    with pytest.raises(WeightsError, match=r"w\.json: runs\.a"):  # save validates before writing
        save_weights(EnsembleWeights(runs={"a": -0.5}), tmp_path / "w.json")
    assert not (tmp_path / "w.json").exists()
