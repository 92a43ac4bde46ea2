"""``rsna2024 evaluate`` on fabricated OOF run folders (no training): the tables equal ``rsna2024.metric`` on
hand-built inputs, the fast scorer and blend equal the metric and ``ensemble.blend``, fitted weights drop a noise
run, fitted temperatures undo over- and underconfidence, the nested fit never sees the fold it is scored on, and
the weights file round-trips through ``load_weights``."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from oof_runs import calibrated, run_table, write_data, write_run

from rsna2024.baselines.prior import prior_oof
from rsna2024.cli import main
from rsna2024.constants import CONDITIONS, PRED_COLUMNS, TARGET_COLUMNS, study_row_ids
from rsna2024.data.contract import labels_long
from rsna2024.inference.ensemble import EnsembleWeights, load_weights
from rsna2024.inference.evaluate import (
    EQUAL,
    IN_SAMPLE,
    NESTED,
    EvaluateError,
    Scorer,
    blend_probs,
    confusion_by_group,
    ensemble_table,
    evaluate_runs,
    fit_ensemble,
    nested_fit,
    reliability,
    stack_runs,
)
from rsna2024.metric import score, solution_from_labels, solution_from_long

COLS = list(PRED_COLUMNS)


# --------------------------------------------------------------------------- hand-built case
@pytest.fixture
def hand(tmp_path):
    """Two studies in two folds (study 10: spinal L1/L2 Moderate, L2/L3 Severe; study 20: spinal L5/S1 missing;
    all else Normal/Mild), a split spinal run and a global run."""
    data = tmp_path / "data"
    data.mkdir()
    special = {(10, "spinal_canal_stenosis_l1_l2"): "Moderate", (10, "spinal_canal_stenosis_l2_l3"): "Severe",
               (20, "spinal_canal_stenosis_l5_s1"): np.nan}
    pd.DataFrame([{"study_id": s, **{t: special.get((s, t), "Normal/Mild") for t in TARGET_COLUMNS}}
                  for s in (10, 20)]).to_csv(data / "train.csv", index=False)
    pd.DataFrame({"study_id": [10, 20], "fold": [0, 1]}).to_csv(data / "folds.csv", index=False)
    ids = [r for s in (10, 20) for r in study_row_ids(s)]
    spinal = np.array(["spinal" in r for r in ids])
    n = len(ids)
    split = run_table(ids, np.tile([0.2, 0.7, 0.1], (n, 1)), spinal, np.tile([0.6, 0.3, 0.1], (n, 1)))
    glob = run_table(ids, np.tile([0.9, 0.05, 0.05], (n, 1)))
    runs = [write_run(tmp_path / "runs", "split_a", "split_spinal", split, data),
            write_run(tmp_path / "runs", "global_a", "global", glob, data)]
    return data, runs, ids, spinal


def test_tables_equal_the_metric_by_hand(hand, tmp_path):
    data, runs, ids, spinal = hand
    result = evaluate_runs(data, runs, out_dir=tmp_path / "out")
    table = result.scores.set_index("model")
    assert list(table.index) == ["split_a", "global_a", EQUAL, "prior"]
    assert table["kind"].tolist() == ["split", "global", "equal weights", "image-free prior"]
    wide = pd.read_csv(data / "train.csv")
    solution = solution_from_labels(wide)

    # split_a's spinal term by hand: 7 Normal rows at 0.2 (w 1), the Moderate at 0.7 (w 2), the Severe at 0.1 (w 4)
    assert table.loc["split_a", "spinal"] == pytest.approx((-7 * np.log(0.2) - 2 * np.log(0.7) - 4 * np.log(0.1)) / 13)
    assert table.loc["global_a", "foraminal"] == pytest.approx(-np.log(0.9))
    for name, run in zip(["split_a", "global_a"], runs):
        expected = score(solution, pd.read_csv(run / "oof.csv")[["row_id", *COLS]])
        assert table.loc[name, ["total", "spinal", "foraminal", "subarticular", "any_severe_spinal"]].tolist() == \
            pytest.approx([expected[k] for k in ["total", "spinal", "foraminal", "subarticular", "any_severe_spinal"]])

    # equal-weight ensemble: spinal rows the mean of both runs' model rows, the others global_a's alone
    by_hand = pd.DataFrame({"row_id": ids})
    by_hand[COLS] = np.where(spinal[:, None], [0.55, 0.375, 0.075], [0.9, 0.05, 0.05])
    expected = score(solution, by_hand)
    assert table.loc[EQUAL, "total"] == pytest.approx(expected["total"])
    assert table.loc[EQUAL, "any_severe_spinal"] == pytest.approx(expected["any_severe_spinal"])
    written = pd.read_csv(tmp_path / "out" / "oof_ensemble.csv").set_index("row_id").loc[ids, COLS]
    np.testing.assert_allclose(written.to_numpy(), by_hand[COLS].to_numpy())

    # the prior row is the prior of the same folds; vs_prior divides by it
    prior = score(solution, prior_oof(wide, pd.read_csv(data / "folds.csv")))
    assert table.loc["prior", "total"] == pytest.approx(prior["total"])
    assert table.loc["global_a", "vs_prior"] == pytest.approx(table.loc["global_a", "total"] / prior["total"])

    # per level: the metric on the rows of that level; "all" is the metric's term
    levels = result.levels.set_index(["model", "group"])
    level = [r.endswith("l2_l3") for r in ids]
    sub = by_hand[level]
    at_l2_l3 = score(solution[solution["row_id"].isin(set(sub["row_id"]))], sub)
    assert levels.loc[(EQUAL, "spinal"), "l2_l3"] == pytest.approx(at_l2_l3["spinal"])
    assert levels.loc[(EQUAL, "subarticular"), "l2_l3"] == pytest.approx(at_l2_l3["subarticular"])
    assert levels.loc[(EQUAL, "spinal"), "all"] == pytest.approx(expected["spinal"])
    assert levels.loc[("split_a", "spinal"), "l5_s1"] == pytest.approx(-np.log(0.2))  # study 10 only: Normal

    for name in ["evaluate_scores.csv", "evaluate_scores.md", "evaluate_levels.csv", "evaluate_levels.md"]:
        assert (tmp_path / "out" / name).is_file(), name
    assert not (tmp_path / "out" / "ensemble_weights.json").exists()  # nothing fitted, no weights file
    assert pd.read_csv(tmp_path / "out" / "evaluate_scores.csv")["model"].tolist() == list(table.index)


def test_reliability_and_confusion_by_hand(hand):
    data, runs, ids, _ = hand
    result = evaluate_runs(data, runs)
    glob = result.predictions["global_a"]  # 0.9 / 0.05 / 0.05 everywhere
    curve = reliability(glob, result.labels, bins=2).set_index(["group", "label"])
    # spinal: 9 labelled rows (7 Normal/Mild, 1 Moderate, 1 Severe)
    assert curve.loc[("spinal", "normal_mild"), ["bin", "predicted", "observed", "rows"]].tolist() == \
        pytest.approx([1, 0.9, 7 / 9, 9])
    assert curve.loc[("spinal", "severe"), ["bin", "predicted", "observed", "rows"]].tolist() == \
        pytest.approx([0, 0.05, 1 / 9, 9])
    assert curve.loc[("foraminal", "moderate"), "observed"] == 0.0
    matrices = confusion_by_group(glob, result.labels)
    assert matrices["spinal"].tolist() == [[7, 0, 0], [1, 0, 0], [1, 0, 0]]
    assert matrices["foraminal"].tolist() == [[20, 0, 0], [0, 0, 0], [0, 0, 0]]
    split = confusion_by_group(result.predictions["split_a"], result.labels)["spinal"]  # argmax moderate
    assert split.tolist() == [[0, 7, 0], [0, 1, 0], [0, 1, 0]]


# --------------------------------------------------------------------------- synthetic runs
def _stack(data, tables: dict[str, pd.DataFrame]):
    wide = pd.read_csv(data / "train.csv")
    return stack_runs(tables, labels_long(wide), pd.read_csv(data / "folds.csv"))


@pytest.fixture
def synth(tmp_path):
    data, q = write_data(tmp_path / "data", studies=90, folds=3)
    return data, q["row_id"].to_numpy(), calibrated(q[COLS].to_numpy())


def test_scorer_and_fast_blend_equal_metric_and_blend(synth):
    data, ids, good = synth
    rng = np.random.default_rng(3)
    spinal = np.array(["spinal" in r for r in ids])
    tables = {"a": run_table(ids, rng.dirichlet([1, 1, 1], len(ids))),
              "b": run_table(ids, good, spinal, rng.dirichlet([2, 2, 2], len(ids))),
              "c": run_table(ids, rng.dirichlet([1, 2, 3], len(ids)))}
    stack = _stack(data, tables)
    long = labels_long(pd.read_csv(data / "train.csv")).sort_values("row_id", ignore_index=True)
    assert (long["label_index"] < 0).any()  # missing labels are part of the case
    probs = rng.dirichlet([1, 1, 1], len(ids))
    for rows in (None, stack.fold == 1, stack.level == "l4_l5"):
        mask = np.ones(len(ids), bool) if rows is None else rows
        expected = score(solution_from_long(long[mask]), stack.table(probs, mask))
        assert Scorer(stack, rows).terms(probs) == pytest.approx(expected)

    weights = EnsembleWeights(runs={"a": 0.0, "b": 0.7, "c": 0.3},
                              temperature={"spinal_canal_stenosis": 1.7, "right_subarticular_stenosis": 0.6})
    for w in (None, weights, EnsembleWeights(runs={"b": 1.0}, temperature={"spinal_canal_stenosis": 2.0})):
        vector = np.ones(3) if w is None else np.array([w.weight(n) for n in "abc"])
        fast = blend_probs(stack, vector, None if w is None else w.temperature)
        np.testing.assert_allclose(fast, stack.align(ensemble_table(stack, w)), atol=1e-12)
    # only "b" weighted: the rows b does not predict keep the files' prior rows (b's own), untempered
    only_b = stack.align(ensemble_table(stack, EnsembleWeights(runs={"b": 1.0}, temperature={
        "left_subarticular_stenosis": 3.0})))
    not_spinal = np.array(["spinal" not in r for r in stack.row_ids])
    np.testing.assert_allclose(only_b[not_spinal], stack.align(tables["b"])[not_spinal])


def test_noise_run_gets_no_weight(synth, tmp_path):
    data, ids, good = synth
    noise = np.random.default_rng(4).dirichlet([1, 1, 1], len(ids))
    runs = [write_run(tmp_path / "runs", "good", "global", run_table(ids, good), data),
            write_run(tmp_path / "runs", "noise", "global", run_table(ids, noise), data)]
    result = evaluate_runs(data, runs, fit_weights=True)
    assert result.weights.runs["noise"] < 0.05 and result.weights.runs["good"] > 0.95
    assert result.weights.temperature == {}
    fits = result.fits.set_index("fit")
    assert (fits["w:noise"] < 0.05).all() and len(fits) == 4  # 3 outer folds + all folds
    total = result.scores.set_index("model")["total"]
    assert total[NESTED] < total[EQUAL] - 0.1
    assert total[NESTED] == pytest.approx(total["good"], abs=0.01)


@pytest.mark.parametrize("power, direction", [(3.0, "over"), (1 / 3, "under")])
def test_temperature_undoes_over_and_underconfidence(synth, power, direction):
    data, ids, good = synth
    sharp = good ** power
    stack = _stack(data, {"run": run_table(ids, sharp / sharp.sum(axis=1, keepdims=True))})
    fitted = fit_ensemble(stack, np.ones(len(ids), bool), fit_weights=False, fit_temperature=True)
    assert set(fitted.temperature) == set(CONDITIONS)
    temps = np.array(list(fitted.temperature.values()))
    if direction == "over":  # p = r ** 3: T about 3 flattens it back
        assert (temps > 1.5).all(), fitted.temperature
    else:
        assert (temps < 0.7).all(), fitted.temperature
    tempered = blend_probs(stack, np.ones(1), fitted.temperature)
    assert Scorer(stack).terms(tempered)["total"] < Scorer(stack).terms(stack.probs[0])["total"] - 0.01


def test_nested_fit_never_sees_the_fold_it_scores(synth):
    data, ids, good = synth
    rng = np.random.default_rng(5)
    stack = _stack(data, {"a": run_table(ids, good), "b": run_table(ids, rng.dirichlet([1, 1, 1], len(ids)))})
    _, fits = nested_fit(stack)
    # scramble fold 0's labels and predictions: fold 0's fit (made on folds 1 and 2) must not move, the others must
    f0 = stack.fold == 0
    probs, label = stack.probs.copy(), stack.label.copy()
    probs[:, f0] = rng.dirichlet([1, 1, 1], (2, f0.sum()))
    label[f0] = rng.permutation(label[f0])
    _, refits = nested_fit(dataclasses.replace(stack, probs=probs, label=label))
    assert refits[0] == fits[0]
    assert refits[1] != fits[1] and refits[2] != fits[2]


def test_nested_score_is_not_optimistic(tmp_path):
    """Run a is right on fold 0 and noise on fold 1, run b the reverse: fitting on a fold's own rows would pick the
    right run for each fold (optimistic); the nested fit picks the other fold's run and pays for it."""
    data, q = write_data(tmp_path / "data", studies=60, folds=2)
    ids, good = q["row_id"].to_numpy(), calibrated(q[COLS].to_numpy())
    noise = np.random.default_rng(6).dirichlet([0.5, 0.5, 0.5], len(ids))
    fold0 = np.array([int(r.split("_")[0]) % 2 == 0 for r in ids])  # study i in fold i % 2 (ids from 100)
    a = np.where(fold0[:, None], good, noise)
    b = np.where(fold0[:, None], noise, good)
    runs = [write_run(tmp_path / "runs", name, "global", run_table(ids, p), data) for name, p in (("a", a), ("b", b))]
    result = evaluate_runs(data, runs, fit_weights=True)
    fits = result.fits.set_index("fit")
    assert fits.loc["fold 0 (fit on the others)", "w:b"] > 0.9  # fitted on fold 1, where b is right
    assert fits.loc["fold 1 (fit on the others)", "w:a"] > 0.9
    total = result.scores.set_index("model")["total"]
    assert total[NESTED] > total[EQUAL] + 0.5  # fitted elsewhere: the wrong run for each fold
    assert "(no gain on held-out folds: prefer equal weights)" in result.format()
    assert total[IN_SAMPLE] <= total[EQUAL] + 1e-9  # fitted on every row: never worse than equal weights there
    # what fitting on each fold's own rows would report: far better than the nested score
    stack = result.stack
    own = np.zeros_like(stack.probs[0])
    for k in (0, 1):
        mine = stack.fold == k
        w = fit_ensemble(stack, mine, fit_temperature=False)
        own[mine] = blend_probs(stack, np.array([w.weight("a"), w.weight("b")]))[mine]
    assert Scorer(stack).terms(own)["total"] < total[NESTED] - 0.3


# --------------------------------------------------------------------------- the command and its files
def test_cli_writes_weights_that_load(tmp_path, capsys):
    data, q = write_data(tmp_path / "data", studies=30, folds=3)
    ids, good = q["row_id"].to_numpy(), calibrated(q[COLS].to_numpy())
    noise = np.random.default_rng(7).dirichlet([1, 1, 1], len(ids))
    spinal = np.array(["spinal" in r for r in ids])
    runs = [write_run(tmp_path / "runs", "global_good", "global", run_table(ids, good), data),
            write_run(tmp_path / "runs", "split_spinal", "split_spinal", run_table(ids, noise, spinal), data)]
    args = ["evaluate", "--data", str(data), "--runs", *map(str, runs), "--fit-weights"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "runs" / "evaluate"  # default: beside the run folders
    assert printed.startswith("| model | kind | runs | total |") and "nested fit: total" in printed
    weights = load_weights(out / "ensemble_weights.json")
    assert set(weights.runs) == {"global_good", "split_spinal"}  # run folder names
    fits = pd.read_csv(out / "evaluate_fits.csv").set_index("fit")
    assert weights.runs["global_good"] == pytest.approx(fits.loc["all folds", "w:global_good"])
    assert weights.runs["split_spinal"] < 0.05
    for name in ["evaluate_fits.md", "oof_ensemble_nested.csv", "oof_ensemble_fitted.csv"]:
        assert (out / name).is_file(), name
    assert main(args) == 0  # same weights again: fine

    # other weights do not replace the file silently
    more = [*args, "--fit-temperature"]
    (out / "evaluate_scores.csv").unlink()
    assert main(more) == 2
    assert "ensemble_weights.json exists with other weights; pass --overwrite" in capsys.readouterr().err
    assert not (out / "evaluate_scores.csv").exists()  # refused before writing anything
    assert load_weights(out / "ensemble_weights.json") == weights
    assert main([*more, "--overwrite"]) == 0
    assert set(load_weights(out / "ensemble_weights.json").temperature) == set(CONDITIONS)
    # without fitting: the earlier fit's tables go, the weights file stays
    assert main(["evaluate", "--data", str(data), "--runs", *map(str, runs)]) == 0
    assert not (out / "evaluate_fits.csv").exists() and not (out / "oof_ensemble_nested.csv").exists()
    assert (out / "oof_ensemble.csv").is_file() and (out / "ensemble_weights.json").is_file()
    custom = tmp_path / "w" / "mine.json"
    assert main([*more, "--out", str(tmp_path / "o2"), "--weights-out", str(custom), "--points", "predicted"]) == 0
    assert load_weights(custom) == load_weights(out / "ensemble_weights.json")


def test_errors_name_the_problem(synth, tmp_path):
    data, ids, good = synth
    table = run_table(ids, good)
    one = write_run(tmp_path / "x", "run", "global", table, data)
    other = write_run(tmp_path / "y", "run", "global", table, data)
    with pytest.raises(EvaluateError, match="distinct names"):
        evaluate_runs(data, [one, other])
    holes = write_run(tmp_path / "runs", "holes", "global", table[table["row_id"] != ids[3]], data)
    with pytest.raises(EvaluateError, match=f"holes: 1 row id.*{ids[3]}"):
        evaluate_runs(data, [holes])
    # a run with one fold only: tables are fine, a nested fit is impossible
    partial = tmp_path / "runs" / "partial"
    partial.mkdir()
    (partial / "config.yaml").write_text((one / "config.yaml").read_text())
    (one / "oof_fold0.csv").rename(partial / "oof_fold0.csv")
    assert len(evaluate_runs(data, [partial]).scores) == 3
    with pytest.raises(EvaluateError, match="at least 2 folds"):
        evaluate_runs(data, [partial], fit_weights=True)
    with pytest.raises(EvaluateError, match="only when something is fitted"):
        evaluate_runs(data, [one], weights_out=tmp_path / "w.json")
