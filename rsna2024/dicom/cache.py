"""The preprocessing cache: every series decoded once, normalised, stored as ``.npy`` with its geometry.

Layout (``cache_root`` defaults to ``<data_dir>/../cache``, i.e. a ``cache`` folder beside the data folder)::

    <cache_root>/v<FORMAT>-<key>/          key = hash of the preprocessing parameters and the format version
        params.json                        the parameters that produced this folder
        series/<study_id>/<series_id>.npy  canonical pixels (slices x rows x columns, see dicom.orientation)
        series/<study_id>/<series_id>.json geometry record (written last: its presence marks the series done):
                                           canonical geometry, the stored grid of every InstanceNumber
                                           ("stored") and the transform between them ("orientation")
        slices.csv                         per-slice canonical and stored geometry of every finished series
        index.csv                          one row per series (status ok or failed, with the error), written last

Every file is written through a temporary name and renamed, so an interrupted run never leaves a
file that looks finished; a rerun skips finished series and retries failed ones. Later stages call
:func:`load_cached_series` and never read DICOM.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rsna2024.dicom.normalize import NormalizeParams, intensity_range, normalize
from rsna2024.dicom.orientation import Orientation
from rsna2024.dicom.reader import read_series
from rsna2024.dicom.series import Series, StoredGeometry
from rsna2024.errors import DicomError, RsnaError
from rsna2024.utils.io import atomic_path, atomic_to_csv, atomic_write_text
from rsna2024.utils.logging import ensure_logging, get_logger

log = get_logger(__name__)

CACHE_FORMAT_VERSION = 2  # 2: canonical orientation, stored grids and the transform in each record
INDEX_FILE = "index.csv"
SLICES_FILE = "slices.csv"
CACHE_DTYPES = ("float16", "float32")
INDEX_COLUMNS = ("split", "study_id", "series_id", "series_description", "status", "error", "pixels",
                 "n_slices", "rows", "columns", "row_spacing", "col_spacing", "slice_spacing",
                 "normal_x", "normal_y", "normal_z", "intensity_low", "intensity_high")
_GEOMETRY_FIELDS = ("instance_numbers", "positions", "row_dirs", "col_dirs", "spacings")
_STORED_FIELDS = ("positions", "row_dirs", "col_dirs", "spacings", "shapes")


@dataclass(frozen=True)
class CacheParams:
    """What the cached pixels depend on; its :meth:`key` names the cache folder."""

    normalize: NormalizeParams = field(default_factory=NormalizeParams)
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype must be one of {list(CACHE_DTYPES)}, got {self.dtype!r}")

    def to_dict(self) -> dict:
        return {"format_version": CACHE_FORMAT_VERSION, **asdict(self)}

    def key(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def default_cache_root(data_dir: str | Path) -> Path:
    """``<data_dir>/../cache``: a ``cache`` folder beside the data folder."""
    return Path(data_dir).absolute().parent / "cache"


def cache_dir(cache_root: str | Path, params: CacheParams = CacheParams()) -> Path:
    """The folder of one parameter set inside ``cache_root``."""
    return Path(cache_root) / f"v{CACHE_FORMAT_VERSION}-{params.key()}"


def _series_paths(folder: Path, study_id: int, series_id: int) -> tuple[Path, Path]:
    base = folder / "series" / str(study_id) / str(series_id)
    return base.with_suffix(".npy"), base.with_suffix(".json")


def _record_row(record: dict) -> dict:
    """The index row of a finished series' geometry record."""
    spacings = np.asarray(record["spacings"])
    normal = record["normal"]
    return {
        "split": record["split"], "study_id": record["study_id"], "series_id": record["series_id"],
        "series_description": record["description"], "status": "ok", "error": "",
        "pixels": record["pixels"], "n_slices": len(record["instance_numbers"]),
        "rows": record["shape"][1], "columns": record["shape"][2],
        "row_spacing": float(np.median(spacings[:, 0])), "col_spacing": float(np.median(spacings[:, 1])),
        "slice_spacing": record["slice_spacing"],
        "normal_x": normal[0], "normal_y": normal[1], "normal_z": normal[2],
        "intensity_low": record["intensity_low"], "intensity_high": record["intensity_high"],
    }


def cache_series(image_folder: Path, folder: Path, params: CacheParams, split: str, study_id: int,
                 series_id: int, description: str) -> dict:
    """Decode, normalise and store one series (skipped if already finished); return its index row.

    A series that cannot be read gives a row with status ``failed`` and the error, and nothing is
    written, so the next run tries it again.
    """
    ensure_logging()
    npy, meta = _series_paths(folder, study_id, series_id)
    if meta.exists() and npy.exists():
        return _record_row(json.loads(meta.read_text()))
    try:
        series = read_series(image_folder, description=description)
    except (DicomError, OSError) as exc:
        log.warning("series %s/%s (%s) failed: %s", study_id, series_id, image_folder, exc)
        return {"split": split, "study_id": study_id, "series_id": series_id,
                "series_description": description, "status": "failed", "error": str(exc)}
    low, high = intensity_range(series.pixels, params.normalize)
    pixels = normalize(series.pixels, params.normalize, dtype=params.dtype, value_range=(low, high))
    with atomic_path(npy) as tmp, open(tmp, "wb") as fh:
        np.save(fh, pixels)
    record = {
        "split": split, "study_id": study_id, "series_id": series_id, "description": description,
        "pixels": npy.relative_to(folder).as_posix(), "shape": list(pixels.shape),
        "normal": series.series_normal.tolist(), "slice_spacing": series.slice_spacing,
        "intensity_low": low, "intensity_high": high,
        **{name: np.asarray(getattr(series, name)).tolist() for name in _GEOMETRY_FIELDS},
        "orientation": series.orientation.to_dict(),
        "stored": {name: np.asarray(getattr(series.stored, name)).tolist() for name in _STORED_FIELDS},
    }
    atomic_write_text(meta, json.dumps(record))
    return _record_row(record)


def _tasks(data_dir: Path, split: str) -> list[dict]:
    from rsna2024.data.contract import images_dir, load_series_descriptions, series_descriptions_file

    splits = ("train", "test") if split == "all" else (split,)
    tasks = []
    for sp in splits:
        if split == "all" and not series_descriptions_file(data_dir, sp).exists():
            log.info("no %s; skipping the %s split", series_descriptions_file(data_dir, sp), sp)
            continue
        for row in load_series_descriptions(data_dir, sp).itertuples(index=False):
            tasks.append({"image_folder": images_dir(data_dir, sp) / str(row.study_id) / str(row.series_id),
                          "split": sp, "study_id": int(row.study_id), "series_id": int(row.series_id),
                          "description": row.series_description})
    return tasks


def _geometry_columns(rec: dict, prefix: str = "") -> dict:
    pos, rd, cd, sp = (np.asarray(rec[k]) for k in _GEOMETRY_FIELDS[1:])
    return {**{f"{prefix}position_{a}": pos[:, i] for i, a in enumerate("xyz")},
            **{f"{prefix}row_dir_{a}": rd[:, i] for i, a in enumerate("xyz")},
            **{f"{prefix}col_dir_{a}": cd[:, i] for i, a in enumerate("xyz")},
            f"{prefix}row_spacing": sp[:, 0], f"{prefix}col_spacing": sp[:, 1]}


def _slices_table(folder: Path, index: pd.DataFrame) -> pd.DataFrame:
    """Per-slice geometry of every finished series of ``index``: the canonical grid (``position_x``, ...)
    and the stored grid of the InstanceNumber (``stored_position_x``, ..., ``stored_rows``, ``stored_columns``)."""
    tables = []
    for row in index[index["status"] == "ok"].itertuples(index=False):
        rec = json.loads(_series_paths(folder, row.study_id, row.series_id)[1].read_text())
        shapes = np.asarray(rec["stored"]["shapes"])
        tables.append(pd.DataFrame({
            "study_id": row.study_id, "series_id": row.series_id,
            "slice_index": np.arange(len(shapes)), "instance_number": rec["instance_numbers"],
            **_geometry_columns(rec), **_geometry_columns(rec["stored"], "stored_"),
            "stored_rows": shapes[:, 0], "stored_columns": shapes[:, 1],
        }))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def preprocess(data_dir: str | Path, cache_root: str | Path | None = None, split: str = "all",
               workers: int = 1, params: CacheParams | None = None) -> Path:
    """Decode every series listed in ``<split>_series_descriptions.csv`` into the cache; return the
    path of the index file.

    ``split`` is ``train``, ``test`` or ``all`` (both, skipping a split without its CSV).
    ``cache_root`` defaults to :func:`default_cache_root`. Runs ``workers`` processes (joblib) with a
    progress bar; finished series are skipped, failed ones are listed in the index with their error.
    """
    from joblib import Parallel, delayed

    data_dir = Path(data_dir)
    params = params or CacheParams()
    folder = cache_dir(default_cache_root(data_dir) if cache_root is None else cache_root, params)
    folder.mkdir(parents=True, exist_ok=True)
    params_file = folder / "params.json"
    if not params_file.exists():
        atomic_write_text(params_file, json.dumps(params.to_dict(), indent=2, sort_keys=True))
    tasks = _tasks(data_dir, split)
    log.info("preprocessing %d series of %s into %s with %d worker(s)", len(tasks), data_dir, folder, workers)
    jobs = (delayed(cache_series)(folder=folder, params=params, **t) for t in tasks)
    progress = dict(total=len(tasks), desc="preprocess", unit="series")
    if workers > 1:
        rows = list(tqdm(Parallel(n_jobs=workers, return_as="generator_unordered")(jobs), **progress))
    else:
        rows = [fn(*a, **kw) for fn, a, kw in tqdm(jobs, **progress)]

    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    index_path = folder / INDEX_FILE
    if index_path.exists():  # keep the rows of splits not processed in this run
        old = _read_index(index_path)
        done = {"train", "test"} if split == "all" else {split}
        index = pd.concat([old[~old["split"].isin(done)], index], ignore_index=True)
    index = index.astype({c: "Int64" for c in ("study_id", "series_id", "n_slices", "rows", "columns")})
    index = index.sort_values(["split", "study_id", "series_id"], ignore_index=True)
    failed = int((index["status"] == "failed").sum())
    if failed:
        log.warning("%d of %d series failed; see the error column of %s", failed, len(index), index_path)
    atomic_to_csv(_slices_table(folder, index), folder / SLICES_FILE)
    atomic_to_csv(index, index_path)
    return index_path


def _resolve_cache(cache: str | Path) -> Path:
    cache = Path(cache)
    folder = cache.parent if cache.name == INDEX_FILE else cache
    if not (folder / "params.json").exists():
        raise RsnaError(f"{folder} is not a preprocessing cache folder (no params.json); run "
                        f"`rsna2024 preprocess --data DIR` and pass the folder of its index.csv")
    return folder


def load_cache_index(cache: str | Path) -> pd.DataFrame:
    """The index table of a cache (its folder or its ``index.csv``)."""
    path = _resolve_cache(cache) / INDEX_FILE
    if not path.exists():
        raise RsnaError(f"{path} does not exist: the preprocessing run has not finished")
    return _read_index(path)


def _read_index(path: Path) -> pd.DataFrame:
    index = pd.read_csv(path, dtype={"split": str, "series_description": str, "status": str, "error": str,
                                     "pixels": str})
    index["error"] = index["error"].fillna("")
    return index


def load_cached_series(cache: str | Path, study_id: int, series_id: int, mmap: bool = True) -> Series:
    """The cached canonical ``Series`` (normalised pixels in the cache dtype, memory-mapped by default,
    the full per-slice canonical and stored geometry and the orientation) of one series, identical in
    geometry to what ``read_series`` gave. ``cache`` is a cache folder or its ``index.csv``."""
    folder = _resolve_cache(cache)
    npy, meta = _series_paths(folder, study_id, series_id)
    if not meta.exists() or not npy.exists():
        raise RsnaError(f"series {study_id}/{series_id} is not in the cache {folder} (no {meta.name}); "
                        f"run `rsna2024 preprocess` or check the index's error column")
    rec = json.loads(meta.read_text())
    return Series(
        pixels=np.load(npy, mmap_mode="r" if mmap else None),
        **{name: np.asarray(rec[name]) for name in _GEOMETRY_FIELDS},
        study_id=rec["study_id"], series_id=rec["series_id"], description=rec["description"],
        orientation=Orientation.from_dict(rec["orientation"]),
        stored=StoredGeometry(**{name: np.asarray(rec["stored"][name]) for name in _STORED_FIELDS}),
    )
