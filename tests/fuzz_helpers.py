"""Test helper (not a test module) of the fuzz suite (``tests/test_fuzz_*.py``): the per-example guard that
counts cases and stops hangs, the hypothesis settings of each profile, the in-process command runner, and the
DICOM side: a tiny phantom series (:func:`write_fuzz_data`) and the mutations hypothesis draws for it
(:func:`dicom_mutations`; each a :class:`DicomMutation` that can also be applied by hand, e.g. to damage studies
of a test folder: ``apply_mutations(folder, [RemoveTag(0, "PixelSpacing"), FileBytes(1, "truncate", keep=0.5)])``).

Profiles (loaded by ``conftest.py`` from ``HYPOTHESIS_PROFILE``): ``default`` draws the same cases on every run
(derandomized, so the normal test command is reproducible) within the test budget; ``long`` (nightly) draws
:data:`LONG_FACTOR` times as many fresh random cases per test and keeps failing ones in hypothesis' database.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from pydicom.valuerep import format_number_as_ds

from rsna2024.cli import main as cli_main
from rsna2024.constants import COORDINATE_COLUMNS, LABELS, SERIES_COLUMNS, TARGET_COLUMNS
from rsna2024.synthetic.dicom_writer import SliceGeometry, write_mr_slice

LONG_FACTOR = 25
# A fuzz case running longer than this is a hang: the case fails (SIGALRM) instead of blocking the suite.
HANG_LIMIT_S = 60.0
# Cases tried and seconds spent per suite in this session (printed by conftest's terminal summary).
FUZZ_STATS: dict[str, list[float]] = {}


def register_profiles() -> str:
    """Register the ``default`` and ``long`` profiles and load the one ``HYPOTHESIS_PROFILE`` names."""
    common = dict(deadline=timedelta(seconds=20), print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("default", derandomize=True, database=None, **common)
    settings.register_profile("long", derandomize=False, **common)
    name = profile_name()
    settings.load_profile(name)
    return name


def profile_name() -> str:
    return os.environ.get("HYPOTHESIS_PROFILE", "default")


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings of a fuzz test: ``examples`` cases (times :data:`LONG_FACTOR` in the long profile)."""
    return settings(max_examples=examples * (LONG_FACTOR if profile_name() == "long" else 1))


class FuzzHang(AssertionError):
    """A fuzz case ran past :data:`HANG_LIMIT_S`."""


@contextmanager
def fuzz_case(suite: str, limit_s: float = HANG_LIMIT_S) -> Iterator[None]:
    """Count one case of ``suite`` and its time; raise :class:`FuzzHang` if it runs past ``limit_s``."""
    def on_alarm(signum, frame):
        raise FuzzHang(f"a {suite} fuzz case ran past {limit_s:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    start = time.perf_counter()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        stats = FUZZ_STATS.setdefault(suite, [0, 0.0])
        stats[0] += 1
        stats[1] += time.perf_counter() - start


def fuzz_summary() -> str | None:
    """``'fuzz suite (profile default): 120 dicom + 300 csv cases in 41.2 s'``, or None if no case ran."""
    if not FUZZ_STATS:
        return None
    parts = " + ".join(f"{int(n)} {suite}" for suite, (n, _) in sorted(FUZZ_STATS.items()))
    seconds = sum(s for _, s in FUZZ_STATS.values())
    return f"fuzz suite (profile {profile_name()}): {parts} cases in {seconds:.1f} s"


def run_cli(*argv) -> tuple[int, str, str]:
    """``rsna2024 argv`` in this process: (exit code, stdout, stderr). The kit's log handlers are restored after."""
    logger = logging.getLogger("rsna2024")
    handlers, level = list(logger.handlers), logger.level
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = cli_main([str(a) for a in argv])
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        for h in handlers:
            logger.addHandler(h)
        logger.setLevel(level)
    return code, out.getvalue(), err.getvalue()


def error_line(err: str, prog: str) -> str:
    """The one error line a failed command printed (the last line of stderr); no traceback, no second one."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(f"{prog}: error: "), err
    assert sum(line.startswith(f"{prog}: ") for line in lines) == 1, err
    return lines[-1]


def file_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


# ===================================================================================== DICOM: a tiny phantom series
FUZZ_STUDY, FUZZ_SERIES = 101, 202
FUZZ_ROWS, FUZZ_COLUMNS, FUZZ_SLICES = 10, 12, 5
FUZZ_SPACING = (0.9, 0.8)  # (row spacing, column spacing) mm
FUZZ_GAP = 4.0  # mm between slice planes
FUZZ_RESCALE = (2.0, -100.0)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix of angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def fuzz_slice_pixels(instance: int, rows: int = FUZZ_ROWS, columns: int = FUZZ_COLUMNS) -> np.ndarray:
    """Stored values of one slice: a pattern unique to each instance, below 4096 (12 bits)."""
    return ((instance * 97 + 7 * np.arange(rows * columns)) % 3000).reshape(rows, columns).astype(np.uint16)


def write_fuzz_series(folder: Path) -> Path:
    """The base series of the DICOM fuzz cases, written by the phantom's DICOM writer: :data:`FUZZ_SLICES` oblique
    sagittal slices of :data:`FUZZ_ROWS` x :data:`FUZZ_COLUMNS` pixels (row direction posterior, so the reader flips
    it), InstanceNumber 1 on the patient's left (so the canonical order runs against the InstanceNumbers), rescaled."""
    rot = _rotation(0.05, 0.12, 0.17)
    row_dir, col_dir = rot @ np.array([0.0, -1.0, 0.0]), rot @ np.array([0.0, 0.0, -1.0])
    normal = np.cross(row_dir, col_dir)
    centre = np.array([3.0, -20.0, 40.0])
    for k in range(FUZZ_SLICES):
        instance = k + 1
        plane_centre = centre + (FUZZ_SLICES // 2 - k) * FUZZ_GAP * normal * np.sign(normal[0])
        position = (plane_centre - (FUZZ_COLUMNS - 1) / 2 * FUZZ_SPACING[1] * row_dir
                    - (FUZZ_ROWS - 1) / 2 * FUZZ_SPACING[0] * col_dir)
        geometry = SliceGeometry(position=position, row_dir=row_dir, col_dir=col_dir, spacing=FUZZ_SPACING,
                                 thickness=3.5, spacing_between_slices=FUZZ_GAP)
        write_mr_slice(folder / f"{instance}.dcm", fuzz_slice_pixels(instance), geometry, instance_number=instance,
                       series_description="Sagittal T2/STIR", study_id=FUZZ_STUDY, series_id=FUZZ_SERIES,
                       rescale=FUZZ_RESCALE)
    return folder


def write_fuzz_data(root: Path) -> Path:
    """A Kaggle-layout data folder holding one study with the base series (:func:`write_fuzz_series`) and its CSVs
    (a label point on InstanceNumber 3)."""
    root.mkdir(parents=True, exist_ok=True)
    labels = {"study_id": [FUZZ_STUDY], **{t: [LABELS[i % 3]] for i, t in enumerate(TARGET_COLUMNS)}}
    pd.DataFrame(labels).to_csv(root / "train.csv", index=False)
    pd.DataFrame([(FUZZ_STUDY, FUZZ_SERIES, "Sagittal T2/STIR")], columns=list(SERIES_COLUMNS)).to_csv(
        root / "train_series_descriptions.csv", index=False)
    pd.DataFrame([(FUZZ_STUDY, FUZZ_SERIES, 3, "Spinal Canal Stenosis", "L1/L2", 5.5, 4.25)],
                 columns=list(COORDINATE_COLUMNS)).to_csv(root / "train_label_coordinates.csv", index=False)
    write_fuzz_series(root / "train_images" / str(FUZZ_STUDY) / str(FUZZ_SERIES))
    return root


# ===================================================================================== DICOM: mutations
# Tags a mutation may remove or garble: geometry, pixel description, rescale, identity and description.
FUZZ_TAGS: tuple[str, ...] = (
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel", "NumberOfFrames", "PhotometricInterpretation",
    "RescaleSlope", "RescaleIntercept", "InstanceNumber", "SeriesDescription", "SliceThickness", "PixelData")
# Tags whose absence leaves a slice fully usable.
OPTIONAL_TAGS = frozenset({"RescaleSlope", "RescaleIntercept", "SeriesDescription", "SliceThickness",
                           "NumberOfFrames", "HighBit"})
FUZZ_VRS: tuple[str, ...] = ("US", "SS", "UL", "SL", "FL", "FD", "DS", "IS", "LO", "SH", "CS", "UI", "OB", "OW",
                             "UN", "SQ", "AT")
# Transfer syntaxes a mutation re-encodes a slice to (the pixels stay the same) or merely claims (raw data kept).
REENCODINGS: tuple[str, ...] = ("explicit_big_endian", "implicit_little_endian", "deflated", "rle")
FALSE_SYNTAXES: dict[str, str] = {
    "jpeg2000_uid_raw_data": JPEG2000Lossless, "jpeg_baseline_uid_raw_data": JPEGBaseline8Bit,
    "rle_uid_raw_data": RLELossless, "jpegls_uid_raw_data": JPEGLSLossless, "unknown_uid": "1.2.3.4.5.6.7",
    "big_endian_uid_little_endian_data": ExplicitVRBigEndian}


def _target(folder: Path, index: int) -> Path | None:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return files[index % len(files)] if files else None


def _load(path: Path) -> pydicom.FileDataset | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path)
    except Exception:  # noqa: BLE001 - damaged by an earlier mutation: nothing more to edit
        return None


def _save(ds: pydicom.FileDataset, path: Path) -> bool:
    """Write ``ds`` over ``path`` as it was encoded; False (file untouched) if pydicom cannot write it."""
    try:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(buffer)
    except Exception:  # noqa: BLE001 - a value an earlier mutation garbled that pydicom refuses to write
        return False
    path.write_bytes(buffer.getvalue())
    return True


def _write_with_meta(ds: pydicom.FileDataset, path: Path, syntax_uid: str) -> None:
    """``ds`` encoded explicit VR little endian, behind a file meta that claims ``syntax_uid``."""
    meta = ds.file_meta.copy()
    meta.TransferSyntaxUID = syntax_uid
    head = DicomBytesIO()
    write_file_meta_info(head, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    path.write_bytes(b"\0" * 128 + b"DICM" + head.getvalue() + body.getvalue())


@dataclass(frozen=True)
class DicomMutation:
    """One change to one file (``file`` indexes the folder's files in name order, modulo their number).

    :meth:`apply` edits the folder and returns the set of damaged file names updated: a file is damaged when the
    change may make it unusable (the reader may drop it); a file not damaged must be read.
    """

    file: int

    def apply(self, folder: Path, damaged: set[str]) -> set[str]:
        path = _target(folder, self.file)
        if path is None:
            return damaged
        return damaged | {path.name} if self.edit(path) else damaged

    def edit(self, path: Path) -> bool:
        """Change ``path``; True if the change may make it unusable."""
        raise NotImplementedError


@dataclass(frozen=True)
class RemoveTag(DicomMutation):
    keyword: str

    def edit(self, path: Path) -> bool:
        ds = _load(path)
        if ds is None or self.keyword not in ds:
            return False
        del ds[self.keyword]
        return _save(ds, path) and self.keyword not in OPTIONAL_TAGS


@dataclass(frozen=True)
class SetRaw(DicomMutation):
    """The tag's value replaced by raw bytes (any VR: None keeps the dictionary's), as a broken writer leaves it."""

    keyword: str
    value: bytes
    vr: str | None = None

    def edit(self, path: Path) -> bool:
        ds = _load(path)
        if ds is None:
            return False
        tag = Tag(self.keyword)
        vr = self.vr or dictionary_VR(tag)
        value = self.value + (b"\0" if vr in ("OB", "OW", "UN", "US", "SS", "UL", "SL", "FL", "FD", "AT", "SQ", "UI")
                              else b" ") * (len(self.value) % 2)
        implicit, little = ds.original_encoding
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, bool(implicit), little is not False)
        return _save(ds, path)


@dataclass(frozen=True)
class SetValue(DicomMutation):
    """The tag set to another valid value (a shifted position, a rotated plane, another spacing, ...)."""

    keyword: str
    value: object

    def edit(self, path: Path) -> bool:
        ds = _load(path)
        if ds is None:
            return False
        try:
            setattr(ds, self.keyword, self.value)
        except Exception:  # noqa: BLE001 - pydicom refuses the value for this file's encoding
            return False
        # fewer Rows or Columns leave native pixel data padded, but compressed frames no longer fit
        compressed = ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian).is_compressed
        return _save(ds, path) and self.keyword in ("Rows", "Columns") and compressed


@dataclass(frozen=True)
class PixelBytes(DicomMutation):
    """PixelData cut short (``delta`` < 0) or padded with zero bytes (``delta`` > 0)."""

    delta: int

    def edit(self, path: Path) -> bool:
        ds = _load(path)
        if ds is None or "PixelData" not in ds:
            return False
        data = ds.PixelData or b""
        ds.PixelData = data[:self.delta] if self.delta < 0 else data + b"\0" * self.delta
        compressed = ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian).is_compressed
        return _save(ds, path) and (self.delta < 0 or compressed)


@dataclass(frozen=True)
class FileBytes(DicomMutation):
    """The file cut to ``keep`` of its length, garbage appended, or the whole file replaced."""

    mode: str  # "truncate", "append" or "replace"
    data: bytes = b""
    keep: float = 0.5

    def edit(self, path: Path) -> bool:
        raw = path.read_bytes()
        if self.mode == "truncate":
            path.write_bytes(raw[:int(len(raw) * self.keep)])
        elif self.mode == "append":
            path.write_bytes(raw + self.data)
        else:
            path.write_bytes(self.data)
        return True


@dataclass(frozen=True)
class Reencode(DicomMutation):
    """The slice written in another transfer syntax, pixels unchanged (``syntax`` in :data:`REENCODINGS`), or a file
    meta claiming another syntax over the raw little-endian data (``syntax`` in :data:`FALSE_SYNTAXES`)."""

    syntax: str

    def edit(self, path: Path) -> bool:
        ds = _load(path)
        if ds is None:
            return False
        if self.syntax in FALSE_SYNTAXES:
            try:
                _write_with_meta(ds, path, FALSE_SYNTAXES[self.syntax])
            except Exception:  # noqa: BLE001 - garbled by an earlier mutation beyond what pydicom writes
                return False
            return True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pixels = ds.pixel_array
                if ds.file_meta.TransferSyntaxUID.is_compressed:
                    ds.decompress()
            buffer = io.BytesIO()
            if self.syntax == "explicit_big_endian":
                ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
                ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
                dcmwrite(buffer, ds, implicit_vr=False, little_endian=False, force_encoding=True)
            elif self.syntax == "implicit_little_endian":
                ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
                dcmwrite(buffer, ds, implicit_vr=True, little_endian=True, force_encoding=True)
            elif self.syntax == "deflated":
                ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
                dcmwrite(buffer, ds, implicit_vr=False, little_endian=True, force_encoding=True)
            else:
                ds.compress(RLELossless, pixels)
                ds.save_as(buffer)
        except Exception:  # noqa: BLE001 - pixels or values an earlier mutation broke: leave the file
            return False
        path.write_bytes(buffer.getvalue())
        return False


@dataclass(frozen=True)
class Duplicate(DicomMutation):
    """A copy of the file under another name (the same InstanceNumber twice)."""

    def apply(self, folder: Path, damaged: set[str]) -> set[str]:
        path = _target(folder, self.file)
        if path is None:
            return damaged
        copy = path.with_name(f"copy{path.name}")
        shutil.copyfile(path, copy)
        return damaged | {copy.name} if path.name in damaged else damaged


@dataclass(frozen=True)
class Delete(DicomMutation):
    def apply(self, folder: Path, damaged: set[str]) -> set[str]:
        path = _target(folder, self.file)
        if path is not None:
            path.unlink()
            return damaged - {path.name}
        return damaged


@dataclass(frozen=True)
class Shuffle(DicomMutation):
    """The files' names permuted (``file`` seeds the permutation): names no longer match InstanceNumbers."""

    def apply(self, folder: Path, damaged: set[str]) -> set[str]:
        files = sorted(p for p in folder.iterdir() if p.is_file())
        names = [p.name for p in files]
        order = np.random.default_rng(self.file).permutation(len(files))
        for p in files:
            p.rename(p.with_name(f".tmp-{p.name}"))
        moved = {}
        for p, k in zip(files, order):
            p.with_name(f".tmp-{p.name}").rename(p.with_name(names[k]))
            moved[p.name] = names[k]
        return {moved[n] for n in damaged if n in moved}


@dataclass(frozen=True)
class EveryFile(DicomMutation):
    """``mutation`` applied to every file of the series (a series written broken throughout)."""

    mutation: DicomMutation = None  # type: ignore[assignment]

    def apply(self, folder: Path, damaged: set[str]) -> set[str]:
        for k in range(len([p for p in folder.iterdir() if p.is_file()])):
            damaged = type(self.mutation)(**{**vars(self.mutation), "file": k}).apply(folder, damaged)
        return damaged


def apply_mutations(folder: Path, mutations) -> set[str]:
    """Apply ``mutations`` in order; the names of the files they may have made unusable."""
    damaged: set[str] = set()
    for m in mutations:
        damaged = m.apply(folder, damaged)
    return damaged


def _ds(values) -> list[str]:
    return [format_number_as_ds(float(v)) for v in values]


def _orientation_value(angles) -> list[str]:
    rot = _rotation(*angles)
    return _ds(list(rot @ np.array([0.0, -1.0, 0.0])) + list(rot @ np.array([0.0, 0.0, -1.0])))


def dicom_mutations() -> st.SearchStrategy[DicomMutation]:
    """Any one :class:`DicomMutation`: a tag removed, garbled (raw bytes, any VR) or set to another valid value,
    pixel data cut or padded, the file cut, extended or replaced, another transfer syntax (real or claimed), a
    duplicated, deleted or renamed file."""
    file = st.integers(0, 15)
    tag = st.sampled_from(FUZZ_TAGS)
    number = st.one_of(st.floats().map(repr), st.integers(-2**70, 2**70).map(str),
                       st.sampled_from(["", " ", "1e999", "-0", "0x10", "1,5", "NaN", "+inf", "1e-320", "65536"]))
    numbers = st.one_of(st.lists(number, max_size=7),  # any count, or the count of a geometry tag (1, 2, 3, 6)
                        st.sampled_from([1, 2, 3, 6]).flatmap(lambda k: st.lists(number, min_size=k, max_size=k)))
    raw_value = st.one_of(numbers.map("\\".join).map(str.encode),
                          st.text(max_size=24).map(str.encode), st.binary(max_size=16))
    finite = st.floats(-1e4, 1e4)
    angle = st.floats(-np.pi, np.pi)
    valid = st.one_of(
        st.builds(SetValue, file, st.just("ImagePositionPatient"), st.tuples(finite, finite, finite).map(_ds)),
        st.builds(SetValue, file, st.just("ImageOrientationPatient"),
                  st.tuples(angle, angle, angle).map(_orientation_value)),
        st.builds(SetValue, file, st.just("PixelSpacing"), st.tuples(st.floats(0.01, 20.0), st.floats(0.01, 20.0))
                  .map(_ds)),
        st.builds(SetValue, file, st.just("InstanceNumber"),
                  st.one_of(st.integers(-3, 12), st.sampled_from([2**31 - 1, -2**31]))),
        st.builds(SetValue, file, st.just("RescaleSlope"),
                  st.tuples(st.floats(1e-3, 1e3), st.sampled_from([-1, 1])).map(lambda v: _ds([v[0] * v[1]])[0])),
        st.builds(SetValue, file, st.just("RescaleIntercept"), st.floats(-1e5, 1e5).map(lambda v: _ds([v])[0])),
        st.builds(SetValue, file, st.just("SeriesDescription"), st.text(max_size=64)),
        st.builds(SetValue, file, st.sampled_from(["Rows", "Columns"]), st.integers(1, FUZZ_ROWS)),
        st.builds(SetValue, file, st.just("BitsStored"), st.integers(12, 16)),
    )
    one_file = st.one_of(
        st.builds(RemoveTag, file, tag),
        st.builds(SetRaw, file, tag, raw_value, st.one_of(st.none(), st.sampled_from(FUZZ_VRS))),
        valid,
        st.builds(PixelBytes, file, st.tuples(st.integers(1, 300), st.sampled_from([-1, 1]))
                  .map(lambda v: v[0] * v[1])),
        st.builds(FileBytes, file, st.just("truncate"), keep=st.floats(0.0, 0.999)),
        st.builds(FileBytes, file, st.sampled_from(["append", "replace"]), st.binary(max_size=64)),
        st.builds(Reencode, file, st.sampled_from(REENCODINGS + tuple(FALSE_SYNTAXES))),
        st.builds(Duplicate, file), st.builds(Delete, file),
    )
    return st.one_of(one_file, st.builds(EveryFile, st.just(0), one_file), st.builds(Shuffle, file))
