"""``rsna2024 evaluate``: out-of-fold tables of classifier runs and of their ensemble, and the ensemble weights and
per-condition temperatures fitted with a nested split.

The runs' OOF files (``oof.csv``, or ``oof_true_points.csv``; read by :func:`rsna2024.baselines.compare.read_run`)
are scored on the studies every run covers, beside the image-free prior fitted on the same folds. The ensemble
is :func:`rsna2024.inference.ensemble.blend` of the runs' ``model`` rows (a split model predicts one condition
group); a row no run with weight > 0 predicts keeps the mean of the files there (the training folds' prior),
untempered. That is what ``rsna2024 predict --weights`` computes on the test studies.

Fitting (``fit_weights``: one weight >= 0 per run, summing to 1, :func:`fit_run_weights`; ``fit_temperature``:
one T per condition, ``p ** (1 / T)``, by a bounded 1-D search) minimises the competition score. Nested: for each
fold k of ``folds.csv`` both are fitted on the rows of the other folds only and applied to fold k; the pooled
result is the honest estimate of the fitted ensemble. Fitting once on every fold gives the weights file
``predict --weights`` reads, and an in-sample score that is optimistic by construction (shown for contrast).

Tables (CSV + Markdown in the output folder): ``evaluate_scores`` (the metric's total and terms per run,
ensemble and prior), ``evaluate_levels`` (each condition group's weighted log loss per level), ``evaluate_fits``
(the weights and temperatures fitted per outer fold and on all folds).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rsna2024.constants import CLASS_WEIGHTS, CONDITIONS, GROUP_OF_CONDITION, LEVELS, PRED_COLUMNS
from rsna2024.errors import RsnaError
from rsna2024.inference.ensemble import EnsembleWeights, blend, save_weights, temper
from rsna2024.metric import EPS, GROUPS, SCORE_KEYS, weighted_log_loss
from rsna2024.utils.io import atomic_to_csv, atomic_write_text
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)
SCORE_COLUMNS = ("model", "kind", "runs", *SCORE_KEYS, "vs_prior", "studies")
LEVEL_COLUMNS = ("model", "group", *LEVELS, "all")
SCORES, LEVELS_TABLE, FITS = "evaluate_scores", "evaluate_levels", "evaluate_fits"  # file stems (.csv, .md)
WEIGHTS_FILE = "ensemble_weights.json"
EQUAL, NESTED, IN_SAMPLE, PRIOR = "ensemble", "ensemble (nested fit)", "ensemble (fit on all folds)", "prior"
ENSEMBLE_FILES = {EQUAL: "oof_ensemble.csv", NESTED: "oof_ensemble_nested.csv", IN_SAMPLE: "oof_ensemble_fitted.csv"}
TEMPERATURE_BOUNDS = (0.1, 10.0)
LOG_WEIGHT_MIN = -12.0  # log-weight search bounds: weights from e**-12 to 1 (relative to the largest)
PRUNE_BELOW = 0.02  # fitted weights under this are tried at 0


class EvaluateError(RsnaError):
    """Runs that cannot be evaluated together (same folder name, too few folds to fit with a nested split)."""


# --------------------------------------------------------------------------- the runs on one grid of rows
@dataclass
class OofStack:
    """The runs' OOF predictions on one grid of rows (the 25 rows of each study evaluated, ``row_id`` order).

    ``probs`` (runs, rows, 3) and ``model`` (runs, rows: the run predicts the row, ``source == model``); ``fill``
    (rows, 3): the mean of the files' other rows (the training folds' prior), for rows no weighted run predicts;
    per row its ``fold``, ``study``, ``condition``, ``level``, ``group`` and ``label`` (class index, -1 missing).
    """

    names: tuple[str, ...]
    row_ids: np.ndarray
    probs: np.ndarray
    model: np.ndarray
    fill: np.ndarray
    fold: np.ndarray
    study: np.ndarray
    condition: np.ndarray
    level: np.ndarray
    label: np.ndarray
    group: np.ndarray = field(init=False)

    def __post_init__(self):
        self.group = np.array([GROUP_OF_CONDITION[c] for c in self.condition])

    def align(self, table: pd.DataFrame) -> np.ndarray:
        """The three columns of a submission-format table in this grid's row order."""
        return table.set_index("row_id").loc[self.row_ids, list(PRED_COLUMNS)].to_numpy(dtype=float)

    def table(self, probs: np.ndarray, rows: np.ndarray | None = None) -> pd.DataFrame:
        """A submission-format table of ``probs`` (all rows, or the ``rows`` mask)."""
        rows = np.ones(len(self.row_ids), bool) if rows is None else rows
        out = pd.DataFrame(probs[rows], columns=list(PRED_COLUMNS))
        out.insert(0, "row_id", self.row_ids[rows])
        return out

    def run_tables(self, rows: np.ndarray | None = None) -> dict[str, pd.DataFrame]:
        """Each run's ``model`` rows (within ``rows``) as a submission-format table: what ``blend`` takes."""
        rows = np.ones(len(self.row_ids), bool) if rows is None else rows
        return {name: self.table(self.probs[r], self.model[r] & rows) for r, name in enumerate(self.names)}


def stack_runs(oofs: Mapping[str, pd.DataFrame], long: pd.DataFrame, folds: pd.DataFrame) -> OofStack:
    """The :class:`OofStack` of ``oofs`` (run name -> OOF table with ``source``) on the rows of ``long`` (labels of
    the studies evaluated, :func:`rsna2024.data.contract.labels_long`). Raises EvaluateError naming the run and a row
    when a table lacks a row or repeats one."""
    long = long.sort_values("row_id", ignore_index=True)
    ids = long["row_id"].to_numpy()
    probs, model = [], []
    for name, oof in oofs.items():
        table = oof[oof["row_id"].isin(set(ids))]
        repeated = table["row_id"][table["row_id"].duplicated()]
        if len(repeated):
            raise EvaluateError(f"{name}: row id {repeated.iloc[0]} appears more than once in its OOF files")
        table = table.set_index("row_id")
        absent = pd.Index(ids).difference(table.index)
        if len(absent):
            raise EvaluateError(f"{name}: {len(absent)} row id(s) of its studies have no prediction, e.g. "
                                f"{absent[0]}; OOF files must hold all 25 rows of each study")
        table = table.loc[ids]
        p = table[list(PRED_COLUMNS)].to_numpy(dtype=float)
        probs.append(p / p.sum(axis=1, keepdims=True))
        model.append((table["source"] == "model").to_numpy())
    probs, model = np.stack(probs), np.stack(model)
    other = (~model).sum(axis=0)
    fill = np.where(other[:, None] > 0, np.einsum("rn,rnc->nc", (~model).astype(float), probs)
                    / np.maximum(other, 1)[:, None], probs.mean(axis=0))
    fold_of = dict(zip(folds["study_id"].astype(int), folds["fold"].astype(int)))
    return OofStack(names=tuple(oofs), row_ids=ids, probs=probs, model=model, fill=fill,
                    fold=long["study_id"].map(fold_of).to_numpy(dtype=int), study=long["study_id"].to_numpy(int),
                    condition=long["condition"].to_numpy(), level=long["level"].to_numpy(),
                    label=long["label_index"].to_numpy(int))


# --------------------------------------------------------------------------- fast metric and blend
class Scorer:
    """The competition score of probability arrays on the stack's ``rows`` (a mask; default all): the numbers of
    :func:`rsna2024.metric.score` on the same rows, from arrays, for the optimisers' many evaluations."""

    def __init__(self, stack: OofStack, rows: np.ndarray | None = None):
        keep = stack.label >= 0
        if rows is not None:
            keep &= rows
        label = np.clip(stack.label, 0, 2)
        self.onehot, self.weight = np.eye(3)[label], np.asarray(CLASS_WEIGHTS)[label]
        self.groups = {g: np.flatnonzero(keep & (stack.group == g)) for g in GROUPS}
        spinal = self.groups["spinal"]
        self.spinal = spinal[np.argsort(stack.study[spinal], kind="stable")]
        studies = stack.study[self.spinal]
        self.starts = np.flatnonzero(np.r_[True, studies[1:] != studies[:-1]]) if len(studies) else np.array([], int)
        if len(self.spinal):
            self.severe = np.maximum.reduceat((label[self.spinal] == 2).astype(float), self.starts)
            self.severe_weight = np.maximum.reduceat(self.weight[self.spinal], self.starts)

    def terms(self, probs: np.ndarray) -> dict[str, float]:
        """``total`` and the four terms (:data:`rsna2024.metric.SCORE_KEYS`); NaN for a term without rows."""
        out = {g: weighted_log_loss(self.onehot[i], probs[i], self.weight[i]) for g, i in self.groups.items()}
        out["any_severe_spinal"] = math.nan
        if len(self.spinal):
            pred = np.clip(np.maximum.reduceat(probs[self.spinal, 2], self.starts), EPS, 1 - EPS)
            out["any_severe_spinal"] = weighted_log_loss(np.stack([1 - self.severe, self.severe], axis=1),
                                                         np.stack([1 - pred, pred], axis=1), self.severe_weight)
        out["total"] = float(np.mean([out[k] for k in (*GROUPS, "any_severe_spinal")]))
        return {k: out[k] for k in SCORE_KEYS}

    def objective(self, probs: np.ndarray) -> float:
        """The mean of the terms that have rows (the total when all have)."""
        values = [v for k, v in self.terms(probs).items() if k != "total" and not math.isnan(v)]
        return float(np.mean(values)) if values else 0.0


def mix(stack: OofStack, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(probs, covered)``: per row the ``weights``-weighted mean of the runs predicting it, renormalised, where
    a run with weight > 0 predicts it (``covered``); ``stack.fill`` elsewhere. Untempered."""
    w = np.clip(np.asarray(weights, dtype=float), 0, None)[:, None] * stack.model
    total = w.sum(axis=0)
    covered = total > 0
    probs = np.einsum("rn,rnc->nc", w, stack.probs) / np.where(covered, total, 1.0)[:, None]
    probs = np.where(covered[:, None], probs, stack.fill)
    return probs / probs.sum(axis=1, keepdims=True), covered


def blend_probs(stack: OofStack, weights: np.ndarray, temperature: Mapping[str, float] | None = None) -> np.ndarray:
    """The ensemble as an array (:func:`mix`, then the temperatures on the covered rows): the same numbers as
    :func:`ensemble_table`, fast."""
    probs, covered = mix(stack, weights)
    if temperature:
        t = np.array([temperature.get(c, 1.0) for c in stack.condition], dtype=float)
        probs[covered] = temper(probs[covered], t[covered])
    return probs


def ensemble_table(stack: OofStack, weights: EnsembleWeights | None = None, rows: np.ndarray | None = None
                   ) -> pd.DataFrame:
    """The ensemble of ``rows`` (mask; default all) as ``predict --weights`` computes it: ``blend`` of the runs'
    model rows (equal weights without ``weights``), the rows it leaves out filled from ``stack.fill``."""
    rows = np.ones(len(stack.row_ids), bool) if rows is None else rows
    blended = blend(stack.run_tables(rows), weights).set_index("row_id")
    out = stack.table(stack.fill, rows).set_index("row_id")
    out.loc[blended.index, list(PRED_COLUMNS)] = blended[list(PRED_COLUMNS)]
    return out.reset_index()


# --------------------------------------------------------------------------- fitting
def fit_run_weights(stack: OofStack, rows: np.ndarray) -> np.ndarray:
    """Run weights (>= 0, sum 1) minimising the score of the blend on ``rows``.

    The blend normalises per row over the runs predicting it, so weights compare only between runs that share
    rows, and a run with a tiny weight still decides the rows only it predicts. The search is over log-weights
    (L-BFGS-B from equal weights, every weight > 0, so no row loses its runs on the way); then each weight
    under :data:`PRUNE_BELOW` is set to 0, smallest first, where that does not worsen the score. Never worse on
    ``rows`` than equal weights."""
    from scipy.optimize import minimize

    n = len(stack.names)
    equal = np.full(n, 1.0 / n)
    if n == 1:
        return equal
    scorer = Scorer(stack, rows)

    def loss(w):
        return scorer.objective(mix(stack, w)[0])

    result = minimize(lambda z: loss(np.exp(z - z.max())), np.zeros(n), method="L-BFGS-B",
                      bounds=[(LOG_WEIGHT_MIN, 0.0)] * n)
    w = np.exp(result.x - result.x.max())
    w, best = w / w.sum(), loss(w)
    for r in np.argsort(w):
        if w[r] >= PRUNE_BELOW:
            break
        trial = w.copy()
        trial[r] = 0.0
        if loss(trial) <= best + 1e-9:
            w, best = trial / trial.sum(), loss(trial)
    return w if best <= loss(equal) else equal


def fit_temperatures(stack: OofStack, weights: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    """One temperature per condition (within :data:`TEMPERATURE_BOUNDS`) minimising the score of the blend with
    ``weights`` on ``rows``. The score is a sum over conditions (the spinal one also holds any_severe_spinal), so
    each is a 1-D search. Conditions without a labelled, predicted row in ``rows`` are left out (T = 1)."""
    from scipy.optimize import minimize_scalar

    base, covered = mix(stack, weights)
    scorer = Scorer(stack, rows)
    out: dict[str, float] = {}
    for condition in CONDITIONS:
        target = covered & (stack.condition == condition)
        if not (target & rows & (stack.label >= 0)).any():
            continue

        def loss(log_t, target=target):
            probs = base.copy()
            probs[target] = temper(base[target], math.exp(log_t))
            return scorer.objective(probs)

        lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
        result = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
        out[condition] = round(math.exp(result.x), 4) if loss(result.x) < loss(0.0) else 1.0
    return out


def fit_ensemble(stack: OofStack, rows: np.ndarray, fit_weights: bool = True, fit_temperature: bool = True
                 ) -> EnsembleWeights:
    """Weights (or equal ones) and temperatures (or none) fitted on the ``rows`` mask only."""
    w = fit_run_weights(stack, rows) if fit_weights else np.full(len(stack.names), 1.0 / len(stack.names))
    temps = fit_temperatures(stack, w, rows) if fit_temperature else {}
    return EnsembleWeights(runs={n: float(f"{v:.6g}") for n, v in zip(stack.names, w)}, temperature=temps)


def nested_fit(stack: OofStack, fit_weights: bool = True, fit_temperature: bool = True
               ) -> tuple[pd.DataFrame, dict[int, EnsembleWeights]]:
    """For each fold k: :func:`fit_ensemble` on the other folds' rows, applied to fold k's rows. Returns the pooled
    ensemble table (every row predicted by a fit that never saw it) and the fit of each fold."""
    folds = sorted(set(stack.fold.tolist()))
    if len(folds) < 2:
        raise EvaluateError(f"fitting needs at least 2 folds among the studies evaluated, found {folds}")
    fits, parts = {}, []
    for k in folds:
        fits[k] = fit_ensemble(stack, stack.fold != k, fit_weights, fit_temperature)
        parts.append(ensemble_table(stack, fits[k], stack.fold == k))
    return pd.concat(parts, ignore_index=True).sort_values("row_id", ignore_index=True), fits


# --------------------------------------------------------------------------- tables
def level_table(stack: OofStack, predictions: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per model and condition group, the group's weighted log loss at each level and over all levels (the
    metric's term; ``predictions``: model name -> submission-format table holding the stack's rows)."""
    scorers = {level: Scorer(stack, stack.level == level) for level in LEVELS}
    scorers["all"] = Scorer(stack)
    rows = []
    for name, table in predictions.items():
        probs = stack.align(table)
        terms = {key: scorer.terms(probs) for key, scorer in scorers.items()}
        rows += [{"model": name, "group": g, **{key: terms[key][g] for key in scorers}} for g in GROUPS]
    return pd.DataFrame(rows, columns=list(LEVEL_COLUMNS))


def fits_table(names: Sequence[str], fits: Mapping[str, EnsembleWeights]) -> pd.DataFrame:
    """One row per fit (``fit`` label -> weights): ``w:<run>`` per run and ``T:<condition>`` per condition."""
    rows = [{"fit": label, **{f"w:{n}": w.weight(n) for n in names},
             **{f"T:{c}": w.temperature.get(c, 1.0) for c in CONDITIONS}} for label, w in fits.items()]
    return pd.DataFrame(rows)


def labelled_rows(table: pd.DataFrame, long: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(group, label index, probs)`` of the labelled rows of ``long`` predicted by ``table``."""
    labelled = long[long["label_index"] >= 0]
    probs = table.set_index("row_id").loc[labelled["row_id"], list(PRED_COLUMNS)].to_numpy(dtype=float)
    group = labelled["condition"].map(GROUP_OF_CONDITION).to_numpy()
    return group, labelled["label_index"].to_numpy(int), probs / probs.sum(axis=1, keepdims=True)


def reliability(table: pd.DataFrame, long: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """Calibration per condition group and class (one vs rest) over the labelled rows: equal-width bins of the
    predicted probability; per non-empty bin the mean ``predicted``, the ``observed`` share of rows of that class
    and the ``rows``. Columns ``group, label, bin, predicted, observed, rows``."""
    group, label, probs = labelled_rows(table, long)
    out = []
    for g in GROUPS:
        sel = group == g
        for c, name in enumerate(PRED_COLUMNS):
            p, hit = probs[sel, c], (label[sel] == c).astype(float)
            which = np.minimum((p * bins).astype(int), bins - 1)
            for b in np.unique(which):
                m = which == b
                out.append({"group": g, "label": name, "bin": int(b), "predicted": float(p[m].mean()),
                            "observed": float(hit[m].mean()), "rows": int(m.sum())})
    return pd.DataFrame(out, columns=["group", "label", "bin", "predicted", "observed", "rows"])


def confusion_by_group(table: pd.DataFrame, long: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per condition group, the 3 x 3 confusion matrix of the argmax class (true down, predicted across)."""
    from rsna2024.baselines.compare import classification_metrics

    group, label, probs = labelled_rows(table, long)
    return {g: classification_metrics(label[group == g], probs[group == g].argmax(axis=1))[2] for g in GROUPS}


def classifier_runs(runs_root: str | Path, points: str = "predicted") -> list[Path]:
    """The run folders under ``runs_root`` that ``predict`` ensembles (tasks ``split_*`` and ``global``) holding a
    merged OOF file (``oof.csv``, or ``oof_true_points.csv``), by name."""
    import yaml

    from rsna2024.baselines.compare import run_kind
    from rsna2024.classifiers.oof import oof_name

    found = []
    for folder in sorted(Path(runs_root).iterdir()):
        config = folder / "config.yaml"
        if config.is_file() and (folder / oof_name(points)).is_file():
            task = str((yaml.safe_load(config.read_text()) or {}).get("task", ""))
            if run_kind(task) in ("split", "global"):
                found.append(folder)
    return found


# --------------------------------------------------------------------------- the command
@dataclass
class Evaluation:
    """What :func:`evaluate_runs` computed: the tables, the model predictions (model name -> submission-format
    table on the studies evaluated), their labels (long), the stack, the fits and the files written."""

    scores: pd.DataFrame
    levels: pd.DataFrame
    fits: pd.DataFrame | None
    weights: EnsembleWeights | None
    predictions: dict[str, pd.DataFrame]
    labels: pd.DataFrame
    stack: OofStack
    files: list[Path] = field(default_factory=list)

    def format(self) -> str:
        """The tables as Markdown, with a line on the fitted ensemble's gain."""
        from rsna2024.baselines.compare import format_markdown

        parts = [format_markdown(self.scores), "Weighted log loss per condition group and level\n\n"
                 + format_markdown(self.levels)]
        if self.fits is not None:
            parts.append("Fitted weights and temperatures\n\n" + format_markdown(self.fits))
            total = self.scores.set_index("model")["total"]
            advice = "" if total[NESTED] < total[EQUAL] else " (no gain on held-out folds: prefer equal weights)"
            parts.append(f"nested fit: total {total[NESTED]:.4f} vs equal weights {total[EQUAL]:.4f} "
                         f"(gain {total[EQUAL] - total[NESTED]:+.4f}){advice}; fitted on all folds, in-sample "
                         f"(optimistic): {total[IN_SAMPLE]:.4f}\n")
        return "\n".join(parts)


def evaluate_runs(data_dir: str | Path, run_dirs: Sequence[str | Path], points: str = "predicted",
                  fit_weights: bool = False, fit_temperature: bool = False, out_dir: str | Path | None = None,
                  weights_out: str | Path | None = None, folds_file: str | Path | None = None,
                  overwrite: bool = False) -> Evaluation:
    """Evaluate ``run_dirs`` (run folders; their folder names name them in the weights file) against the labels of
    ``data_dir`` on the folds of ``folds_file`` (default ``<data_dir>/folds.csv``): the module docstring. With
    ``out_dir`` the tables go there (replacing earlier ones) with the ensembles' OOF tables; when something is
    fitted, the weights fitted on all folds go to ``weights_out`` (default ``<out_dir>/ensemble_weights.json``),
    which must not exist with other content unless ``overwrite``."""
    from rsna2024.baselines.compare import common_studies, load_labels_and_folds, read_run, study_of
    from rsna2024.baselines.prior import prior_oof
    from rsna2024.data.contract import labels_long
    from rsna2024.metric import score, solution_from_long

    if points not in ("predicted", "true"):
        raise ValueError(f"points must be 'predicted' or 'true', got {points!r}")
    if weights_out is not None and not (fit_weights or fit_temperature):
        raise EvaluateError("a weights file is written only when something is fitted: add --fit-weights and/or "
                            "--fit-temperature")
    names = [Path(d).name for d in run_dirs]
    if len(set(names)) != len(names):
        raise EvaluateError(f"run folders must have distinct names (the weights file names runs by folder): {names}")
    wide, folds = load_labels_and_folds(data_dir, folds_file)
    runs = {name: read_run(d, points) for name, d in zip(names, run_dirs)}
    oofs = {name: oof for name, (_, _, oof) in runs.items()}
    studies = common_studies(wide, folds, oofs)
    long = labels_long(wide[wide["study_id"].isin(studies)])
    stack = stack_runs(oofs, long, folds)

    # each run as its files are (the prior rows of a split model included), then the ensembles, then the prior
    entries: list[tuple[str, str, int, pd.DataFrame]] = [
        (name, kind, 1, stack.table(stack.probs[r])) for r, (name, (_, kind, _)) in enumerate(runs.items())]
    entries.append((EQUAL, "equal weights", len(names), ensemble_table(stack)))
    fitted, fits = None, None
    if fit_weights or fit_temperature:
        nested, per_fold = nested_fit(stack, fit_weights, fit_temperature)
        fitted = fit_ensemble(stack, np.ones(len(stack.row_ids), bool), fit_weights, fit_temperature)
        entries.append((NESTED, "nested", len(names), nested))
        entries.append((IN_SAMPLE, "in-sample", len(names), ensemble_table(stack, fitted)))
        fits = fits_table(names, {**{f"fold {k} (fit on the others)": w for k, w in per_fold.items()},
                                  "all folds": fitted})
    prior = prior_oof(wide, folds)
    entries.append((PRIOR, "image-free prior", 0, prior[np.isin(study_of(prior["row_id"]), list(studies))]))

    solution = solution_from_long(long)
    rows = [{"model": name, "kind": kind, "runs": n, **score(solution, table), "studies": len(studies)}
            for name, kind, n, table in entries]
    scores = pd.DataFrame(rows, columns=[c for c in SCORE_COLUMNS if c != "vs_prior"])
    scores["vs_prior"] = scores["total"] / scores["total"].iloc[-1]
    predictions = {name: table for name, _, _, table in entries}
    result = Evaluation(scores[list(SCORE_COLUMNS)], level_table(stack, predictions), fits, fitted, predictions,
                        long, stack)
    weights_path = None
    if fitted is not None and (weights_out is not None or out_dir is not None):
        weights_path = Path(weights_out or Path(out_dir) / WEIGHTS_FILE)
        check_weights_target(fitted, weights_path, overwrite)  # before anything is written
    if out_dir is not None:
        result.files = write_evaluation(result, Path(out_dir), points)
    if weights_path is not None:
        result.files.append(save_weights(fitted, weights_path))
        log.info("wrote %s", weights_path)
    return result


def write_evaluation(result: Evaluation, out_dir: Path, points: str) -> list[Path]:
    """The tables (CSV + Markdown) and the ensembles' OOF tables (:data:`ENSEMBLE_FILES`) into ``out_dir``."""
    from rsna2024.baselines.compare import format_markdown

    if (out_dir / f"{SCORES}.csv").exists():
        log.info("evaluate: replacing the tables in %s", out_dir)
    files = []
    tables = {SCORES: result.scores, LEVELS_TABLE: result.levels}
    if result.fits is not None:
        tables[FITS] = result.fits
    stale = [out_dir / f"{FITS}{ext}" for ext in (".csv", ".md") if FITS not in tables]
    stale += [out_dir / file for name, file in ENSEMBLE_FILES.items() if name not in result.predictions]
    for path in stale:
        if path.exists():
            log.info("evaluate: removing %s of an earlier fit (nothing fitted this time)", path)
            path.unlink()
    for stem, table in tables.items():
        files.append(atomic_to_csv(table, out_dir / f"{stem}.csv", float_format="%.6f"))
        files.append(atomic_write_text(out_dir / f"{stem}.md", f"OOF on {points} points\n\n" + format_markdown(table)))
    for name, file in ENSEMBLE_FILES.items():
        if name in result.predictions:
            files.append(atomic_to_csv(result.predictions[name], out_dir / file))
    return files


def check_weights_target(weights: EnsembleWeights, path: Path, overwrite: bool = False) -> None:
    """Refuse to replace a weights file holding other weights unless ``overwrite``."""
    if path.exists() and not overwrite and path.read_text() != weights.to_json() + "\n":
        raise FileExistsError(f"{path} exists with other weights; pass --overwrite (overwrite=True) to replace it")
