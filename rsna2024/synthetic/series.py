"""Slice plans of a phantom study: oblique sagittal stacks and axial stacks (per disc or continuous).

A :class:`SlicePlan` is one image plane (centre, direction cosines, matrix, pixel size); a
:class:`SeriesPlan` is an ordered stack of them with its instance numbers. Display conventions of
the real data: sagittal images have anterior on the image left and head at the top (row direction
posterior, column direction inferior); axial images have patient right on the image left and
anterior at the top (row direction patient left, column direction posterior).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from rsna2024.constants import AXIAL_T2, LEVELS, SAGITTAL_T1, SAGITTAL_T2
from rsna2024.synthetic.anatomy import DISC_INDEX, Anatomy
from rsna2024.synthetic.dicom_writer import SliceGeometry
from rsna2024.synthetic.quirks import StudyQuirks

ROLE_DESCRIPTION = {"sag_t1": SAGITTAL_T1, "sag_t2": SAGITTAL_T2, "axial": AXIAL_T2, "axial2": AXIAL_T2}
ROLE_CONTRAST = {"sag_t1": "T1", "sag_t2": "T2", "axial": "T2", "axial2": "T2"}
STIR_RATE = 0.3  # share of "Sagittal T2/STIR" series acquired as fat-suppressed STIR


@dataclass(frozen=True)
class SizeSpec:
    """Matrix sizes, fields of view (mm), slice counts and gaps (mm) of one dataset size."""

    sag_matrix: tuple[int, ...]
    sag_fov: tuple[float, float]
    sag_slices: tuple[int, int]  # inclusive range
    sag_gap: tuple[float, float]
    ax_matrix: tuple[int, ...]
    ax_fov: tuple[float, float]
    ax_stack_slices: tuple[int, int]  # per-disc stacks, inclusive range
    ax_gap: tuple[float, float]  # per-disc stacks
    ax_continuous_gap: tuple[float, float]


SIZES: dict[str, SizeSpec] = {
    "small": SizeSpec(sag_matrix=(128,), sag_fov=(260.0, 300.0), sag_slices=(15, 15), sag_gap=(3.2, 4.2),
                      ax_matrix=(128,), ax_fov=(170.0, 210.0), ax_stack_slices=(3, 3), ax_gap=(3.5, 4.5),
                      ax_continuous_gap=(7.0, 9.0)),
    "full": SizeSpec(sag_matrix=(384, 448, 512), sag_fov=(260.0, 330.0), sag_slices=(15, 20), sag_gap=(3.2, 4.5),
                     ax_matrix=(384, 448, 512), ax_fov=(190.0, 250.0), ax_stack_slices=(5, 7), ax_gap=(3.5, 4.5),
                     ax_continuous_gap=(3.5, 4.5)),
}


@dataclass(frozen=True)
class SlicePlan:
    """One image plane; ``row_dir`` runs along increasing column index x, ``col_dir`` along rows y."""

    centre: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    rows: int
    cols: int
    pixel: float  # square pixels, mm
    thickness: float
    gap: float  # SpacingBetweenSlices
    instance_number: int = 0

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def position(self) -> np.ndarray:
        """ImagePositionPatient: centre of the first pixel."""
        return self.centre - (self.cols - 1) / 2 * self.pixel * self.row_dir \
            - (self.rows - 1) / 2 * self.pixel * self.col_dir

    def geometry(self) -> SliceGeometry:
        return SliceGeometry(position=self.position, row_dir=self.row_dir, col_dir=self.col_dir,
                             spacing=(self.pixel, self.pixel), thickness=self.thickness,
                             spacing_between_slices=self.gap)

    def points(self) -> np.ndarray:
        """Patient points (rows*cols, 3) of the pixel centres, row-major."""
        y, x = np.mgrid[0:self.rows, 0:self.cols]
        return self.position + (x.reshape(-1, 1) * self.row_dir + y.reshape(-1, 1) * self.col_dir) * self.pixel

    def project(self, point: np.ndarray) -> tuple[float, float, float]:
        """(x, y) pixel coordinates of a point's projection and its signed distance from the plane."""
        rel = np.asarray(point, float) - self.position
        return (float(rel @ self.row_dir / self.pixel), float(rel @ self.col_dir / self.pixel),
                float(rel @ self.normal))


@dataclass
class SeriesPlan:
    """A series: role, id, description, contrast and its slices in acquisition order."""

    role: str
    series_id: int
    slices: list[SlicePlan]
    rescale: tuple[float, float] | None = None
    scale: float = 1000.0  # stored intensity of a unit signal
    contrast: str = ""  # T1, T2 or STIR; default from the role
    description: str = field(init=False)

    def __post_init__(self):
        self.description = ROLE_DESCRIPTION[self.role]
        self.contrast = self.contrast or ROLE_CONTRAST[self.role]

    def nearest_slice(self, point: np.ndarray) -> tuple[SlicePlan, float, float, float]:
        """The slice whose plane is closest to ``point``, with (x, y) and the distance (mm)."""
        best = min(self.slices, key=lambda sl: abs(sl.project(point)[2]))
        x, y, dist = best.project(point)
        return best, x, y, abs(dist)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _jitter(rng: np.random.Generator, v: np.ndarray, degrees: float) -> np.ndarray:
    """Tilt a direction randomly by about ``degrees``."""
    return _unit(_unit(v) + rng.normal(0, np.sin(np.deg2rad(degrees)), 3))


def _frame(normal: np.ndarray, row_hint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column directions with row x col = normal and row as close as possible to the hint."""
    row = _unit(row_hint - (row_hint @ normal) * normal)
    return row, np.cross(normal, row)


def _stack(centre, normal, row_hint, offsets, matrix: int, fov: float, thickness: float, gap: float) -> list[SlicePlan]:
    """Parallel slices at ``offsets`` (mm, along ``normal``) from ``centre``, in that order."""
    normal = _unit(normal)
    row, col = _frame(normal, row_hint)
    return [SlicePlan(centre=centre + t * normal, row_dir=row, col_dir=col, rows=matrix, cols=matrix,
                      pixel=fov / matrix, thickness=thickness, gap=gap) for t in offsets]


def _blend(rng: np.random.Generator, body: np.ndarray, scanner: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A direction between the scanner axis and the patient's own axis (how far the technologist aligned)."""
    a = rng.uniform(lo, hi)
    return _unit(a * body + (1 - a) * scanner)


_E = np.eye(3)


def sagittal_stack(anat: Anatomy, rng: np.random.Generator, size: SizeSpec) -> list[SlicePlan]:
    """Oblique sagittal stack centred on the canal midline, stacked along patient left-right."""
    left = _jitter(rng, _blend(rng, anat.axis(0), _E[0], 0.7, 1.0), 1.0)
    posterior = _blend(rng, anat.axis(1), _E[1], 0.7, 1.0)
    n = int(rng.integers(size.sag_slices[0], size.sag_slices[1] + 1))
    gap = rng.uniform(*size.sag_gap)
    mid_s = float(np.mean(anat.disc_s[:5]))
    centre = anat.to_patient(rng.uniform(-2, 2), 0.4 * anat.canal_u + rng.uniform(-10, 10),
                             mid_s + rng.uniform(-10, 10))
    offsets = (np.arange(n) - (n - 1) / 2) * gap * rng.choice([-1.0, 1.0])  # instance 1 on either side
    return _stack(centre, -left, posterior, offsets, int(rng.choice(size.sag_matrix)), rng.uniform(*size.sag_fov),
                  thickness=gap - rng.uniform(0.0, 0.5), gap=gap)


def axial_per_disc(anat: Anatomy, rng: np.random.Generator, size: SizeSpec, levels=LEVELS) -> list[SlicePlan]:
    """One short stack per disc, each tilted to its disc, superior level first, superior slice first."""
    matrix, fov = int(rng.choice(size.ax_matrix)), rng.uniform(*size.ax_fov)
    m = int(rng.integers(size.ax_stack_slices[0], size.ax_stack_slices[1] + 1))
    gap = rng.uniform(*size.ax_gap)
    out: list[SlicePlan] = []
    for level in levels:
        s = float(anat.disc_s[DISC_INDEX[level]])
        centre = anat.to_patient(rng.uniform(-3, 3), 0.5 * anat.canal_u + rng.uniform(-5, 5), s + rng.uniform(-1, 1))
        offsets = -(np.arange(m) - (m - 1) / 2) * gap
        out += _stack(centre, _jitter(rng, anat.tangent(s), 2.0), anat.axis(0), offsets, matrix, fov,
                      thickness=gap - 0.5, gap=gap)
    return out


def axial_continuous(anat: Anatomy, rng: np.random.Generator, size: SizeSpec, levels=LEVELS) -> list[SlicePlan]:
    """One continuous stack from above the first to below the last disc level, superior slice first."""
    normal = _jitter(rng, _blend(rng, anat.axis(2), _E[2], 0.0, 0.6), 1.5)
    s_top, s_bottom = (float(anat.disc_s[DISC_INDEX[lv]]) for lv in (levels[0], levels[-1]))
    centre = anat.to_patient(rng.uniform(-3, 3), 0.5 * anat.canal_u + rng.uniform(-5, 5), (s_top + s_bottom) / 2)
    top = (anat.to_patient(0, 0, s_top) - centre) @ normal + 10.0
    bottom = (anat.to_patient(0, 0, s_bottom) - centre) @ normal - 10.0
    gap = rng.uniform(*size.ax_continuous_gap)
    offsets = np.arange(top, bottom - gap, -gap)
    return _stack(centre, normal, anat.axis(0), offsets, int(rng.choice(size.ax_matrix)), rng.uniform(*size.ax_fov),
                  thickness=min(gap, 5.0) - 0.5, gap=gap)


def _number(rng: np.random.Generator, slices: list[SlicePlan], offset: bool, shuffled: bool) -> list[SlicePlan]:
    """Assign instance numbers: 1..n in acquisition order, or offset, or interleaved (out of position order)."""
    n = len(slices)
    start = 1
    if offset:
        start = int(rng.integers(1000, 5000)) if rng.random() < 0.2 else int(rng.integers(2, 60))
    order = np.arange(n)
    if shuffled and n >= 3:  # interleaved acquisition: odd positions first, then even ones
        order = np.concatenate([np.arange(0, n, 2), np.arange(1, n, 2)])
    numbers = np.empty(n, dtype=int)
    numbers[order] = start + np.arange(n)
    return [replace(sl, instance_number=int(k)) for sl, k in zip(slices, numbers)]


def _resize_one(rng: np.random.Generator, slices: list[SlicePlan]) -> list[SlicePlan]:
    """Give one slice a smaller matrix over the same field of view."""
    i = int(rng.integers(len(slices)))
    sl = slices[i]
    rows = max(16, int(round(sl.rows * 0.75)))
    slices = list(slices)
    slices[i] = replace(sl, rows=rows, cols=rows, pixel=sl.pixel * sl.rows / rows)
    return slices


def plan_series(anat: Anatomy, rng: np.random.Generator, size: SizeSpec, series_ids: dict[str, int],
                quirks: StudyQuirks) -> list[SeriesPlan]:
    """Slice plans of every series the study has, with instance numbers and quirks applied."""
    continuous = bool(rng.random() < 0.4)
    stacks = {
        "sag_t1": lambda: sagittal_stack(anat, rng, size),
        "sag_t2": lambda: sagittal_stack(anat, rng, size),
        "axial": lambda: (axial_continuous if continuous else axial_per_disc)(anat, rng, size),
        "axial2": lambda: (axial_per_disc if continuous else axial_continuous)(anat, rng, size, LEVELS[2:]),
    }
    plans = []
    for role in quirks.roles():
        slices = stacks[role]()
        if quirks.odd_slice_size == role:
            slices = _resize_one(rng, slices)
        slices = _number(rng, slices, role in quirks.instance_offset, role in quirks.shuffled_instances)
        rescale = (float(rng.choice([0.5, 2.0])), 0.0) if role in quirks.rescale else None
        contrast = "STIR" if role == "sag_t2" and rng.random() < STIR_RATE else ROLE_CONTRAST[role]
        plans.append(SeriesPlan(role=role, series_id=series_ids[role], slices=slices, rescale=rescale,
                                scale=rng.uniform(500.0, 2500.0), contrast=contrast))
    return plans
