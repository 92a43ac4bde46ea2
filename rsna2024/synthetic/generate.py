"""Write a phantom dataset in the competition's Kaggle layout (DICOM images + the real CSV formats).

``generate_dataset`` plans every study in the main process from the seed (ids, labels, quirks),
renders and writes the studies in joblib workers, then writes the CSVs, ``train.csv`` last. A marker file
(:data:`INCOMPLETE`) lives in the folder while it is written: a generation killed half way is cleared and
written again by the next call without ``overwrite``.
Besides the Kaggle files it writes ground truth under ``phantom/``: ``landmarks.csv`` (true
patient-space landmarks), ``labels.csv`` (true classes of every study, test ones included) and
``studies.json`` (per-study anatomy and series parameters).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from rsna2024.constants import (
    CONDITION_NAMES,
    CONDITION_SERIES,
    CONDITIONS,
    LEVEL_NAMES,
    LEVELS,
    PRED_COLUMNS,
    SERIES_COLUMNS,
    study_row_ids,
)
from rsna2024.constants import COORDINATE_COLUMNS as COORD_COLUMNS
from rsna2024.synthetic.anatomy import Anatomy, sample_anatomy
from rsna2024.synthetic.dicom_writer import write_mr_slice
from rsna2024.synthetic.labels import MISSING, labels_frame, mask_missing, sample_classes
from rsna2024.synthetic.quirks import SERIES_ROLES, QuirkRates, StudyQuirks, draw_quirks
from rsna2024.synthetic.render import Appearance, render_plane
from rsna2024.synthetic.series import SIZES, SeriesPlan, plan_series
from rsna2024.utils.io import atomic_to_csv, atomic_write_text, check_overwrite, clean_stale_temporaries
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)

LANDMARK_COLUMNS = ["study_id", "structure", "level", "x_mm", "y_mm", "z_mm"]
PRIMARY_ROLE = {"Sagittal T1": "sag_t1", "Sagittal T2/STIR": "sag_t2", "Axial T2": "axial"}
INCOMPLETE = ".phantom-incomplete"  # present while generate_dataset writes a folder


@dataclass(frozen=True)
class StudySpec:
    """Everything decided about a study before rendering (picklable, sent to workers)."""

    study_id: int
    split: str  # "train" or "test"
    classes: tuple[int, ...]  # true class per TARGET_COLUMNS
    observed: tuple[int, ...]  # classes with MISSING where the label is left out
    series_ids: dict[str, int]  # role -> series id
    seed: int
    quirks: StudyQuirks


@dataclass
class StudyResult:
    """Rows a written study contributes to the dataset's tables."""

    series_rows: list[tuple]
    coord_rows: list[tuple]
    landmark_rows: list[tuple]
    params: dict
    n_slices: int


def _unique_ids(rng: np.random.Generator, n: int, low: int, high: int) -> list[int]:
    ids: set[int] = set()
    while len(ids) < n:
        ids.update(int(v) for v in rng.integers(low, high, n - len(ids)))
    return [int(v) for v in rng.permutation(sorted(ids))]


def plan_dataset(studies: int, test_studies: int, seed: int, quirks: QuirkRates | None = None) -> list[StudySpec]:
    """Study specs (train first, then test) drawn deterministically from ``seed``."""
    rng = np.random.default_rng(seed)
    n = studies + test_studies
    splits = ["train"] * studies + ["test"] * test_studies
    study_ids = _unique_ids(rng, n, 1_000_000, 4_290_000_000)
    series_ids = _unique_ids(rng, n * len(SERIES_ROLES), 100_000_000, 4_290_000_000)
    classes = sample_classes(rng, n)
    observed = mask_missing(rng, classes)
    study_quirks = draw_quirks(rng, splits, quirks or QuirkRates())
    seeds = rng.integers(0, 2**63 - 1, n)
    return [
        StudySpec(study_id=study_ids[i], split=splits[i], classes=tuple(int(c) for c in classes[i]),
                  observed=tuple(int(c) for c in (observed[i] if splits[i] == "train" else classes[i])),
                  series_ids=dict(zip(SERIES_ROLES, series_ids[i * 4:(i + 1) * 4])), seed=int(seeds[i]),
                  quirks=study_quirks[i])
        for i in range(n)
    ]


def _write_series(plan: SeriesPlan, anat: Anatomy, look: Appearance, rng: np.random.Generator, folder: Path,
                  study_id: int) -> None:
    for sl in plan.slices:
        img = render_plane(anat, look, sl, plan.contrast, plan.scale, rng) + plan.offset
        if plan.rescale is not None:  # stored values map back through RescaleSlope and RescaleIntercept
            img = (img - plan.rescale[1]) / plan.rescale[0]
        write_mr_slice(folder / f"{sl.instance_number}.dcm", np.clip(np.rint(img), 0, 65535), sl.geometry(),
                       instance_number=sl.instance_number, series_description=plan.description, study_id=study_id,
                       series_id=plan.series_id, rescale=plan.rescale)


def coordinate_rows(spec: StudySpec, anat: Anatomy, plans: list[SeriesPlan]) -> list[tuple]:
    """Coordinate rows of the present labels: each landmark projected onto the nearest slice of its series."""
    by_role = {p.role: p for p in plans}
    rows = []
    for ci, cond in enumerate(CONDITIONS):
        plan = by_role.get(PRIMARY_ROLE[CONDITION_SERIES[cond]])
        for li, level in enumerate(LEVELS):
            if plan is None or spec.observed[ci * len(LEVELS) + li] == MISSING:
                continue
            sl, x, y, _ = plan.nearest_slice(anat.landmark(cond, level))
            rows.append((spec.study_id, plan.series_id, sl.instance_number, CONDITION_NAMES[cond],
                         LEVEL_NAMES[level], x, y))
    return rows


def series_parameters(plan: SeriesPlan) -> dict:
    """JSON-friendly summary of a series (for ``phantom/studies.json``), its orientation variant included."""
    first = plan.slices[0]
    return {"series_id": plan.series_id, "role": plan.role, "description": plan.description,
            "slices": len(plan.slices), "rows": first.rows, "columns": first.cols,
            "pixel_spacing": round(first.pixel, 5), "slice_gap": round(first.gap, 4),
            "thickness": round(first.thickness, 4), "rescale": plan.rescale, "contrast": plan.contrast,
            "intensity": {"scale": round(plan.scale, 3), "offset": round(plan.offset, 3)},
            "orientation": plan.orientation()}


def plan_study(spec: StudySpec, size: str) -> tuple[Anatomy, Appearance, list[SeriesPlan], np.random.Generator]:
    """A study's anatomy, appearance and series plans (nothing rendered), and the generator rendering goes on with."""
    rng = np.random.default_rng(spec.seed)
    anat = sample_anatomy(rng, np.array(spec.classes))
    look = Appearance.sample(rng, anat.to_patient(0.0, 0.0, 0.0))
    return anat, look, plan_series(anat, rng, SIZES[size], spec.series_ids, spec.quirks), rng


def write_study(spec: StudySpec, out: Path, size: str) -> StudyResult:
    """Render and write one study's DICOM series; return its table rows."""
    anat, look, plans, rng = plan_study(spec, size)
    study_dir = Path(out) / f"{spec.split}_images" / str(spec.study_id)
    for plan in plans:
        _write_series(plan, anat, look, rng, study_dir / str(plan.series_id), spec.study_id)
    landmarks = [(spec.study_id, st, lv, *np.round(p, 4)) for (st, lv), p in anat.landmarks().items()]
    params = {"study_id": spec.study_id, "split": spec.split, "quirks": asdict(spec.quirks),
              "anatomy": anat.parameters(),
              "series": [series_parameters(p) for p in plans]}
    return StudyResult(
        series_rows=[(spec.study_id, p.series_id, p.description) for p in plans],
        coord_rows=coordinate_rows(spec, anat, plans) if spec.split == "train" else [],
        landmark_rows=landmarks, params=params, n_slices=sum(len(p.slices) for p in plans))


def _prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse to write over a dataset unless ``overwrite`` (or it is a phantom whose writing was interrupted);
    clear the phantom's own folders."""
    if (out / INCOMPLETE).is_file() and not (out / "train.csv").exists():
        log.info("%s holds a phantom whose writing was interrupted: writing it again", out)
        overwrite = True
    check_overwrite(out / "train.csv", overwrite)
    folders = [out / name for name in ("train_images", "test_images", "phantom")]
    if not overwrite:
        for folder in folders:
            if folder.exists() and any(folder.iterdir()):
                raise FileExistsError(f"{folder} is not empty; pass --overwrite (overwrite=True) to replace it")
    for folder in folders:
        if folder.exists():
            log.info("removing %s", folder)
            shutil.rmtree(folder)


def _series_frame(results: list[StudyResult]) -> pd.DataFrame:
    rows = [r for res in results for r in res.series_rows]
    return pd.DataFrame(rows, columns=SERIES_COLUMNS).sort_values(["study_id", "series_id"])


def generate_dataset(out: str | Path, studies: int = 20, test_studies: int = 2, seed: int = 0, size: str = "small",
                     workers: int = 1, preview: str | Path | None = None, overwrite: bool = False,
                     quirks: QuirkRates | None = None) -> Path:
    """Write a phantom dataset into ``out`` and return ``out``.

    ``quirks`` overrides the real-life quirk rates (default :class:`QuirkRates`); ``preview`` draws
    a montage of the first four training studies to that PNG.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    if studies < 1 or test_studies < 0:
        raise ValueError(f"need studies >= 1 and test_studies >= 0, got {studies} and {test_studies}")
    out = Path(out)
    _prepare_output(out, overwrite)
    for folder in (out, out / "phantom"):
        clean_stale_temporaries(folder, recursive=False)
    atomic_write_text(out / INCOMPLETE, json.dumps({"studies": studies, "test_studies": test_studies, "seed": seed,
                                                    "size": size}))
    specs = plan_dataset(studies, test_studies, seed, quirks)
    jobs = Parallel(n_jobs=workers, return_as="generator")(delayed(write_study)(s, out, size) for s in specs)
    results = list(tqdm(jobs, total=len(specs), desc=f"phantom {size}", unit="study"))
    train = [r for r, s in zip(results, specs) if s.split == "train"]
    test = [r for r, s in zip(results, specs) if s.split == "test"]

    phantom = out / "phantom"
    landmarks = pd.DataFrame([r for res in results for r in res.landmark_rows], columns=LANDMARK_COLUMNS)
    atomic_to_csv(landmarks, phantom / "landmarks.csv")
    truth = labels_frame([s.study_id for s in specs], np.array([s.classes for s in specs]))
    truth.insert(1, "split", [s.split for s in specs])
    atomic_to_csv(truth, phantom / "labels.csv")
    atomic_write_text(phantom / "studies.json", json.dumps([r.params for r in results], indent=1))

    test_ids = sorted(s.study_id for s in specs if s.split == "test")
    submission = pd.DataFrame({"row_id": sorted(rid for sid in test_ids for rid in study_row_ids(sid))})
    for col in PRED_COLUMNS:
        submission[col] = 1.0 / len(PRED_COLUMNS)
    atomic_to_csv(submission, out / "sample_submission.csv")
    atomic_to_csv(_series_frame(test), out / "test_series_descriptions.csv")
    atomic_to_csv(_series_frame(train), out / "train_series_descriptions.csv")
    coords = pd.DataFrame([r for res in train for r in res.coord_rows], columns=COORD_COLUMNS)
    atomic_to_csv(coords.sort_values(["study_id", "series_id", "instance_number", "condition", "level"]),
                  out / "train_label_coordinates.csv")
    train_specs = sorted((s for s in specs if s.split == "train"), key=lambda s: s.study_id)
    atomic_to_csv(labels_frame([s.study_id for s in train_specs], np.array([s.observed for s in train_specs])),
                  out / "train.csv")
    (out / INCOMPLETE).unlink()
    log.info("phantom: %d train + %d test studies, %d slices written to %s", len(train), len(test),
             sum(r.n_slices for r in results), out)
    if preview is not None:
        from rsna2024.synthetic.preview import draw_preview

        draw_preview(out, preview)
    return out
