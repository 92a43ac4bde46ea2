"""A study's series as the keypoint stage sees them: read from the preprocessing cache (never DICOM), grouped
by series type, with the reason when a type is missing or could not be read."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pandas as pd

from rsna2024.constants import SERIES_TYPES
from rsna2024.dicom.cache import CacheParams, cache_dir, default_cache_root, load_cache_index, load_cached_series
from rsna2024.dicom.series import Series
from rsna2024.errors import RsnaError


class StudySeries:
    """Cached series of one split, by study and type, loaded lazily (memory-mapped) and kept in a small LRU.

    ``descriptions`` (``study_id, series_id, series_description``) lists what each study should have; the
    cache index says what was read. :meth:`series` returns the readable series of a type, :meth:`problem`
    why there are none.
    """

    def __init__(self, cache: str | Path, descriptions: pd.DataFrame, split: str, max_loaded: int = 64):
        self.cache = Path(cache)
        index = load_cache_index(cache)
        index = index[index["split"] == split].astype({"study_id": "int64", "series_id": "int64"})
        self.status = {(int(r.study_id), int(r.series_id)): (r.status, r.error) for r in index.itertuples()}
        self.listed: dict[int, dict[str, list[int]]] = {}
        for row in descriptions.sort_values(["study_id", "series_id"]).itertuples(index=False):
            by_type = self.listed.setdefault(int(row.study_id), {t: [] for t in SERIES_TYPES})
            by_type[row.series_description].append(int(row.series_id))
        self._loaded: OrderedDict[tuple[int, int], Series] = OrderedDict()
        self.max_loaded = max_loaded

    @property
    def study_ids(self) -> list[int]:
        return sorted(self.listed)

    def series_ids(self, study_id: int, series_type: str) -> list[int]:
        """Ids of the series of ``series_type`` in the study that the cache holds (status ok)."""
        ids = self.listed.get(int(study_id), {}).get(series_type, [])
        return [s for s in ids if self.status.get((int(study_id), s), ("missing", ""))[0] == "ok"]

    def problem(self, study_id: int, series_type: str) -> str | None:
        """Why the study has no readable series of this type (None if it has one)."""
        ids = self.listed.get(int(study_id), {}).get(series_type, [])
        if not ids:
            return f"no {series_type} series"
        if self.series_ids(study_id, series_type):
            return None
        causes = []
        for s in ids:
            status, error = self.status.get((int(study_id), s), ("missing", "not in the cache index"))
            causes.append(f"series {s}: {error or status}")
        return f"{series_type} unreadable ({'; '.join(causes)})"

    def load(self, study_id: int, series_id: int) -> Series:
        key = (int(study_id), int(series_id))
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        series = load_cached_series(self.cache, *key)
        self._loaded[key] = series
        if len(self._loaded) > self.max_loaded:
            self._loaded.popitem(last=False)
        return series

    def series(self, study_id: int, series_type: str) -> list[Series]:
        """The readable series of ``series_type`` of a study, loaded (may be empty)."""
        return [self.load(study_id, s) for s in self.series_ids(study_id, series_type)]

    def __getstate__(self):  # DataLoader workers start with an empty LRU
        state = self.__dict__.copy()
        state["_loaded"] = OrderedDict()
        return state


def resolve_cache(data_dir: str | Path, cache: str | Path | None = None) -> Path:
    """The cache folder to read: ``cache`` itself when it is a parameter folder (holds ``params.json``), else
    the default-parameter folder inside the root ``cache`` (default root: beside the data folder)."""
    if cache is not None and (Path(cache) / "params.json").exists():
        return Path(cache)
    root = default_cache_root(data_dir) if cache is None else Path(cache)
    return cache_dir(root, data_dir, CacheParams())


def require_split_cache(cache: str | Path, split: str) -> None:
    """Raise naming the command to run when the cache holds no series of ``split``."""
    index = load_cache_index(cache)
    if not (index["split"] == split).any():
        raise RsnaError(f"the cache {cache} holds no {split} series; run `rsna2024 preprocess --split {split}`")
