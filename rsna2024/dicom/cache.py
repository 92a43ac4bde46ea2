"""The preprocessing cache: every series decoded once, normalised, stored as ``.npy`` with its geometry.

Layout (``cache_root`` defaults to ``<data_dir>/../cache``, i.e. a ``cache`` folder beside the data folder)::

    <cache_root>/v<FORMAT>-<key>-<data>/   key = hash of the preprocessing parameters and the format version,
                                           data = hash of the data folder's resolved path (two folders never
                                           share entries)
        params.json                        the parameters and the data folder that produced this folder
        series/<study_id>/<series_id>.npy  canonical pixels (slices x rows x columns, see dicom.orientation)
        series/<study_id>/<series_id>.json geometry record (written last: its presence marks the series done):
                                           canonical geometry, the stored grid of every InstanceNumber
                                           ("stored") and the transform between them ("orientation")
        slices.csv                         per-slice canonical and stored geometry of every finished series
        index.csv                          one row per series (status ok or failed, with the error), written last

Every file is written through a temporary name and renamed, so an interrupted run never leaves a
file that looks finished. A rerun skips finished series whose files are unchanged (the record keeps a
fingerprint of their names, sizes and modification times), reads changed ones again (all of them with
``rebuild``) and retries failed ones. Any failure inside one series is recorded in the index
(``status`` failed, ``error`` "<ExceptionType>: message") and the run goes on; slices the reader
dropped are counted in ``dropped_slices`` and listed ("file: reason") in the series' record.
Later stages call :func:`load_cached_series` and never read DICOM.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rsna2024.dicom.normalize import NormalizeParams, intensity_range, normalize
from rsna2024.dicom.orientation import Orientation
from rsna2024.dicom.reader import read_series, series_files
from rsna2024.dicom.series import Series, StoredGeometry
from rsna2024.errors import DataError, DicomError, RsnaError
from rsna2024.utils.io import atomic_path, atomic_to_csv, atomic_write_text, clean_stale_temporaries
from rsna2024.utils.logging import ensure_logging, get_logger

log = get_logger(__name__)

CACHE_FORMAT_VERSION = 2  # 2: canonical orientation, stored grids and the transform in each record
INDEX_FILE = "index.csv"
SLICES_FILE = "slices.csv"
CACHE_DTYPES = ("float16", "float32")
INDEX_COLUMNS = ("split", "study_id", "series_id", "series_description", "status", "error", "pixels",
                 "n_slices", "dropped_slices", "rows", "columns", "row_spacing", "col_spacing", "slice_spacing",
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


def data_key(data_dir: str | Path) -> str:
    """Short hash of the data folder's resolved absolute path: its identity in cache folder names."""
    return hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:10]


def cache_dir(cache_root: str | Path, data_dir: str | Path, params: CacheParams | None = None) -> Path:
    """The folder of one data folder and parameter set inside ``cache_root``."""
    return Path(cache_root) / f"v{CACHE_FORMAT_VERSION}-{(params or CacheParams()).key()}-{data_key(data_dir)}"


def series_fingerprint(image_folder: Path) -> str:
    """Hash of the names, sizes and modification times of a series' files ("" if the folder is missing)."""
    if not image_folder.is_dir():
        return ""
    stats = [(p.name, st.st_size, st.st_mtime_ns) for p in series_files(image_folder) for st in [p.stat()]]
    return hashlib.sha1(json.dumps(stats).encode()).hexdigest()


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
        "dropped_slices": len(record.get("dropped", [])),
        "rows": record["shape"][1], "columns": record["shape"][2],
        "row_spacing": float(np.median(spacings[:, 0])), "col_spacing": float(np.median(spacings[:, 1])),
        "slice_spacing": record["slice_spacing"],
        "normal_x": normal[0], "normal_y": normal[1], "normal_z": normal[2],
        "intensity_low": record["intensity_low"], "intensity_high": record["intensity_high"],
    }


def _finished_record(npy: Path, meta: Path, fingerprint: str) -> dict | None:
    """The stored record of a series if it is finished and its files are unchanged, else None."""
    if not (meta.exists() and npy.exists()):
        return None
    try:
        record = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("fingerprint") == fingerprint else None


def cache_series(image_folder: Path, folder: Path, params: CacheParams, split: str, study_id: int,
                 series_id: int, description: str, rebuild: bool = False) -> dict:
    """Decode, normalise and store one series; return its index row.

    Skipped if finished and its files are unchanged (unless ``rebuild``). Any exception gives a row
    with status ``failed`` and the error, and leaves no record, so the next run tries it again.
    """
    ensure_logging()
    npy, meta = _series_paths(folder, study_id, series_id)
    try:
        fingerprint = series_fingerprint(image_folder)
        record = None if rebuild else _finished_record(npy, meta, fingerprint)
        if record is not None:
            return _record_row(record)
        if meta.exists():
            log.info("series %s/%s: reading again (%s)", study_id, series_id,
                     "--rebuild" if rebuild else "its files changed since it was cached")
            meta.unlink()  # a stale copy must not outlive a failed re-read
            npy.unlink(missing_ok=True)
        series = read_series(image_folder, description=description)
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
        record["fingerprint"] = fingerprint
        record["dropped"] = list(series.dropped)
        atomic_write_text(meta, json.dumps(record))
        return _record_row(record)
    except Exception as exc:  # noqa: BLE001 - one broken series must never end the run
        error = f"{type(exc).__name__}: {exc}"
        log.warning("series %s/%s (%s) failed: %s", study_id, series_id, image_folder, error)
        log.debug("traceback of series %s/%s", study_id, series_id, exc_info=True)
        return {"split": split, "study_id": study_id, "series_id": series_id, "series_description": description,
                "status": "failed", "error": error}


def _tasks(data_dir: Path, split: str) -> list[dict]:
    """One task per series listed in the split(s)' CSV; DataError for a missing data folder, CSV or images
    folder of a requested split (``all`` skips a split lacking either, with a message) or no series at all."""
    from rsna2024.data.contract import images_dir, load_series_descriptions, series_descriptions_file

    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    splits = ("train", "test") if split == "all" else (split,)
    tasks = []
    for sp in splits:
        csv, images = series_descriptions_file(data_dir, sp), images_dir(data_dir, sp)
        if not csv.exists() and split == "all":
            log.info("no %s; skipping the %s split", csv, sp)
            continue
        listed = load_series_descriptions(data_dir, sp)  # a present but unreadable CSV is an error naming it
        if not images.is_dir():
            if split == "all":
                log.info("no %s; skipping the %s split", images, sp)
                continue
            raise DataError(f"{images}: images folder not found (expected <study_id>/<series_id>/*.dcm under it)")
        for row in listed.itertuples(index=False):
            tasks.append({"image_folder": images / str(row.study_id) / str(row.series_id),
                          "split": sp, "study_id": int(row.study_id), "series_id": int(row.series_id),
                          "description": row.series_description})
    if not tasks:
        raise DataError(f"{data_dir}: no series to preprocess; expected "
                        + " or ".join(f"{s}_series_descriptions.csv listing series in {s}_images/" for s in splits))
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


def summarize_index(index: pd.DataFrame) -> str:
    """``'5 series: 3 ok, 2 failed; 1 slice dropped'``: one line about an index table."""
    ok = int((index["status"] == "ok").sum())
    dropped = int(pd.to_numeric(index["dropped_slices"], errors="coerce").fillna(0).sum())
    return (f"{len(index)} series: {ok} ok, {len(index) - ok} failed; "
            f"{dropped} slice{'' if dropped == 1 else 's'} dropped")


def preprocess(data_dir: str | Path, cache_root: str | Path | None = None, split: str = "all",
               workers: int = 1, params: CacheParams | None = None, rebuild: bool = False,
               studies: Collection[int] | None = None, progress: bool = True) -> Path:
    """Decode every series listed in ``<split>_series_descriptions.csv`` into the cache; return the
    path of the index file.

    ``split`` is ``train``, ``test`` or ``all`` (both, skipping a split without its CSV or images).
    ``cache_root`` defaults to :func:`default_cache_root`; the folder inside it is keyed by the data
    folder and ``params`` (:func:`cache_dir`). Runs ``workers`` processes (joblib) with a progress bar;
    unchanged finished series are skipped (all are read again with ``rebuild``), failed ones are listed
    in the index with their error. A missing or empty data folder is a DataError raised before any cache
    file is touched; DicomError (after the index is written) when every series of the run failed.
    """
    from joblib import Parallel, delayed

    data_dir = Path(data_dir)
    params = params or CacheParams()
    tasks = _tasks(data_dir, split)
    if studies is not None:
        wanted = {int(s) for s in studies}
        tasks = [t for t in tasks if t["study_id"] in wanted]
        if not tasks:
            raise DataError(f"{data_dir}: none of the studies {sorted(wanted)[:5]} is listed in the {split} split")
    folder = cache_dir(default_cache_root(data_dir) if cache_root is None else cache_root, data_dir, params)
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(folder)  # what a killed run left half written
    params_file = folder / "params.json"
    if not params_file.exists():
        atomic_write_text(params_file, json.dumps({**params.to_dict(), "data_dir": str(data_dir.resolve())},
                                                  indent=2, sort_keys=True))
    log.info("preprocessing %d series of %s into %s with %d worker(s)%s", len(tasks), data_dir, folder, workers,
             " (rebuild)" if rebuild else "")
    jobs = (delayed(cache_series)(folder=folder, params=params, rebuild=rebuild, **t) for t in tasks)
    bar = dict(total=len(tasks), desc="preprocess", unit="series", disable=not progress)
    if workers > 1:
        rows = list(tqdm(Parallel(n_jobs=workers, return_as="generator_unordered")(jobs), **bar))
    else:
        rows = [fn(*a, **kw) for fn, a, kw in tqdm(jobs, **bar)]

    run = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    index = run
    index_path = folder / INDEX_FILE
    if index_path.exists():  # keep the rows of splits not processed in this run
        old = _read_index(index_path)
        redone = old["split"].isin({"train", "test"} if split == "all" else {split})
        if studies is not None:
            redone &= old["study_id"].isin(wanted)
        index = pd.concat([old[~redone], index], ignore_index=True)
    index = index.astype({c: "Int64" for c in ("study_id", "series_id", "n_slices", "dropped_slices", "rows",
                                               "columns")})
    index = index.sort_values(["split", "study_id", "series_id"], ignore_index=True)
    atomic_to_csv(_slices_table(folder, index), folder / SLICES_FILE)
    atomic_to_csv(index, index_path)
    failed = run[run["status"] == "failed"]
    summary = f"this run: {summarize_index(run)}"
    if len(failed) == len(run):
        raise DicomError(f"every series failed ({summary}), e.g. {failed['study_id'].iloc[0]}/"
                         f"{failed['series_id'].iloc[0]}: {failed['error'].iloc[0]}; each cause is in the error "
                         f"column of {index_path}")
    if len(failed):
        log.warning("%s; see the error column of %s", summary, index_path)
    else:
        log.info("%s", summary)
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
        dropped=list(rec.get("dropped", [])),
    )
