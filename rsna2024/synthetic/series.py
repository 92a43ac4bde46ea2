"""Slice plans of a phantom study: oblique sagittal stacks and axial stacks (per disc or continuous).

A :class:`SlicePlan` is one image plane (centre, direction cosines, matrix, pixel size); a
:class:`SeriesPlan` is an ordered stack of them with its instance numbers. Standard display conventions
of the real data: sagittal images have anterior on the image left and head at the top (row direction
posterior, column direction inferior), stacked from patient right to left; axial images have patient
right on the image left and anterior at the top (row direction patient left, column direction
posterior), stacked from head to foot. The orientation quirks (``quirks.ORIENTATION_KINDS``) reverse
the stack, negate the row or column direction or transpose the in-plane frame.

Per series the matrix, field of view (hence pixel spacing), slice count, gap and thickness vary, and
the anatomy lands anywhere in a wide window of the image (``SAG_PLACEMENT``, ``AX_PLACEMENT``), so
label positions spread across the image as they do in the real data.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from rsna2024.constants import AXIAL_T2, CONDITION_SERIES, CONDITIONS, LEVELS, SAGITTAL_T1, SAGITTAL_T2
from rsna2024.synthetic.anatomy import DISC_INDEX, Anatomy
from rsna2024.synthetic.dicom_writer import SliceGeometry
from rsna2024.synthetic.quirks import ORIENTATION_KINDS, StudyQuirks, plane_of

ROLE_DESCRIPTION = {"sag_t1": SAGITTAL_T1, "sag_t2": SAGITTAL_T2, "axial": AXIAL_T2, "axial2": AXIAL_T2}
ROLE_CONTRAST = {"sag_t1": "T1", "sag_t2": "T2", "axial": "T2", "axial2": "T2"}
STIR_RATE = 0.3  # share of "Sagittal T2/STIR" series acquired as fat-suppressed STIR
PEDESTAL_RATE = 0.2  # share of series whose stored intensities sit on a constant offset


@dataclass(frozen=True)
class SizeSpec:
    """Matrix sizes (with their weights), fields of view (mm), slice counts and gaps (mm) of one dataset size.

    A series draws its square matrix from ``matrices`` and its field of view from the range, scaled by
    ``(matrix / matrix_ref) ** 0.25`` (larger matrices tend to come with larger fields of view and finer pixels).
    """

    matrices: tuple[int, ...]
    matrix_weights: tuple[float, ...]
    matrix_ref: int
    sag_fov: tuple[float, float]
    sag_slices: tuple[int, int]  # inclusive range; raised where the labelled structures need more
    sag_gap: tuple[float, float]
    ax_fov: tuple[float, float]
    ax_stack_slices: tuple[int, int]  # per-disc stacks, inclusive range
    ax_gap: tuple[float, float]  # per-disc stacks
    ax_continuous_gap: tuple[float, float]

    def __post_init__(self):
        if len(self.matrices) != len(self.matrix_weights) or abs(sum(self.matrix_weights) - 1) > 1e-9:
            raise ValueError("SizeSpec.matrix_weights must hold one weight per matrix and sum to 1")


SIZES: dict[str, SizeSpec] = {
    "small": SizeSpec(matrices=(96, 112, 128, 144, 160, 192), matrix_weights=(0.12, 0.18, 0.32, 0.14, 0.14, 0.10),
                      matrix_ref=128, sag_fov=(255.0, 365.0), sag_slices=(13, 17), sag_gap=(3.2, 4.4),
                      ax_fov=(160.0, 250.0), ax_stack_slices=(3, 3), ax_gap=(3.5, 4.5), ax_continuous_gap=(7.0, 9.0)),
    "full": SizeSpec(matrices=(384, 448, 512, 576, 640, 768, 896, 1024),
                     matrix_weights=(0.32, 0.12, 0.24, 0.06, 0.14, 0.05, 0.03, 0.04), matrix_ref=512,
                     sag_fov=(255.0, 365.0), sag_slices=(14, 22), sag_gap=(3.0, 4.8), ax_fov=(160.0, 250.0),
                     ax_stack_slices=(4, 7), ax_gap=(3.0, 5.0), ax_continuous_gap=(3.5, 5.0)),
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
        x = (np.arange(self.cols) * self.pixel)[None, :, None] * self.row_dir
        y = (np.arange(self.rows) * self.pixel)[:, None, None] * self.col_dir
        return (self.position + x + y).reshape(-1, 3)

    def to_patient(self, x, y) -> np.ndarray:
        """Patient point (mm) of pixel column ``x``, row ``y`` (arrays broadcast to (..., 3))."""
        x, y = (np.asarray(v, dtype=np.float64)[..., None] for v in (x, y))
        return self.position + (x * self.row_dir + y * self.col_dir) * self.pixel

    def project(self, point: np.ndarray) -> tuple[float, float, float]:
        """(x, y) pixel coordinates of a point's projection and its signed distance from the plane."""
        rel = np.asarray(point, float) - self.position
        return (float(rel @ self.row_dir / self.pixel), float(rel @ self.col_dir / self.pixel),
                float(rel @ self.normal))


@dataclass
class SeriesPlan:
    """A series: role, id, description, contrast, its slices in acquisition order and how it is stored."""

    role: str
    series_id: int
    slices: list[SlicePlan]
    rescale: tuple[float, float] | None = None
    scale: float = 1000.0  # stored intensity of a unit signal
    offset: float = 0.0  # stored intensity added to every pixel (a pedestal)
    contrast: str = ""  # T1, T2 or STIR; default from the role
    variant: dict[str, bool] = field(default_factory=dict)  # orientation kind -> applied (ORIENTATION_KINDS)
    description: str = field(init=False)

    def __post_init__(self):
        self.description = ROLE_DESCRIPTION[self.role]
        self.contrast = self.contrast or ROLE_CONTRAST[self.role]

    def nearest_slice(self, point: np.ndarray) -> tuple[SlicePlan, float, float, float]:
        """The slice whose plane is closest to ``point``, with (x, y) and the distance (mm)."""
        best = min(self.slices, key=lambda sl: abs(sl.project(point)[2]))
        x, y, dist = best.project(point)
        return best, x, y, abs(dist)

    def orientation(self) -> dict:
        """How the series is stored (for ``phantom/studies.json``): stack order, variant flags and the
        patient directions in which image x (column index) and y (row index) increase."""
        first = self.slices[0]
        reverse = bool(self.variant.get("reversed_stack"))
        order = ("left_to_right", "right_to_left") if plane_of(self.role) == "sagittal" else \
            ("foot_to_head", "head_to_foot")
        return {"stack_order": order[int(not reverse)],
                **{kind: bool(self.variant.get(kind)) for kind in ORIENTATION_KINDS},
                "x_toward": direction_name(first.row_dir), "y_toward": direction_name(first.col_dir)}


_DIRECTIONS = (("right", "left"), ("anterior", "posterior"), ("inferior", "superior"))  # LPS -, + per axis


def direction_name(v: np.ndarray) -> str:
    """The patient direction (left, posterior, superior, ...) a unit vector points closest to."""
    axis = int(np.argmax(np.abs(v)))
    return _DIRECTIONS[axis][int(v[axis] > 0)]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _jitter(rng: np.random.Generator, v: np.ndarray, degrees: float) -> np.ndarray:
    """Tilt a direction randomly by about ``degrees``."""
    return _unit(_unit(v) + rng.normal(0, np.sin(np.deg2rad(degrees)), 3))


def _frame(normal: np.ndarray, row_hint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column directions with row x col = normal and row as close as possible to the hint."""
    row = _unit(row_hint - (row_hint @ normal) * normal)
    return row, np.cross(normal, row)


def _stack(centre, normal, row, offsets, matrix: int, fov: float, thickness: float, gap: float) -> list[SlicePlan]:
    """Parallel slices at ``offsets`` (mm, along ``normal``) from ``centre``, in that order."""
    normal = _unit(normal)
    row, col = _frame(normal, row)
    return [SlicePlan(centre=centre + t * normal, row_dir=row, col_dir=col, rows=matrix, cols=matrix,
                      pixel=fov / matrix, thickness=thickness, gap=gap) for t in offsets]


def _blend(rng: np.random.Generator, body: np.ndarray, scanner: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A direction between the scanner axis and the patient's own axis (how far the technologist aligned)."""
    a = rng.uniform(lo, hi)
    return _unit(a * body + (1 - a) * scanner)


_E = np.eye(3)
MARGIN = 0.04  # labelled structures keep this fraction of the field of view from the image border
# Where the reference point (the canal) lands in the image, as fractions of the field of view (x, y ranges),
# in the standard frame; narrowed per study so that every labelled structure stays inside the image.
SAG_PLACEMENT = ((0.25, 0.78), (0.28, 0.72))
AX_PLACEMENT = ((0.27, 0.73), (0.30, 0.80))


def _matrix_fov(rng: np.random.Generator, size: SizeSpec, fov_range: tuple[float, float]) -> tuple[int, float]:
    matrix = int(rng.choice(size.matrices, p=size.matrix_weights))
    return matrix, rng.uniform(*fov_range) * (matrix / size.matrix_ref) ** 0.25


def _placement(rng: np.random.Generator, frames, fov: float, ranges) -> tuple[float, tuple[float, float]]:
    """Field of view and the reference point's (x, y) image fraction for in-plane frames ``(row, col, rel, margin)``.

    ``rel`` (N, 3) holds the structures that must be seen, relative to each frame's reference point, and
    ``margin`` (N,) the fraction of the field of view each keeps from the border. The field of view grows
    if they would not fit; each fraction is drawn from its range where the structures keep their margins
    (from the feasible interval itself where the two do not overlap).
    """
    m = np.concatenate([np.broadcast_to(margin, len(rel)) for *_, rel, margin in frames])
    d = [np.concatenate([rel @ frame[axis] for *frame, rel, _ in frames]) for axis in (0, 1)]  # mm along x, y
    fov = max(fov, *((v.max() - v.min()) / (1 - 2 * m.max() - 0.05) for v in d))
    fracs = []
    for v, (lo, hi) in zip(d, ranges):
        f_lo, f_hi = (m - v / fov).max(), (1 - m - v / fov).min()
        a, b = max(lo, f_lo), min(hi, f_hi)
        fracs.append(rng.uniform(a, b) if a <= b else rng.uniform(f_lo, f_hi))
    return fov, tuple(fracs)


def _placed(ref: np.ndarray, row: np.ndarray, col: np.ndarray, fov: float, frac) -> np.ndarray:
    """Image centre that puts ``ref`` at image fractions ``frac`` = (x, y)."""
    return ref - (frac[0] - 0.5) * fov * row - (frac[1] - 0.5) * fov * col


def sagittal_points(anat: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Structures a sagittal image must show and their margins: the labelled landmarks and disc centres
    (``MARGIN``) and the canal behind L1 (inside the image)."""
    l1 = (anat.disc_s[DISC_INDEX["l1_l2"]] + anat.disc_s[DISC_INDEX["t12_l1"]]) / 2
    pts = [anat.landmark(st, lv) for st in ("spinal_canal_stenosis", "left_neural_foraminal_narrowing",
                                            "right_neural_foraminal_narrowing", "disc_center") for lv in LEVELS]
    return np.array(pts + [anat.to_patient(0.0, anat.canal_u, l1)]), np.array([MARGIN] * len(pts) + [0.005])


def axial_points(anat: Anatomy, level: str) -> np.ndarray:
    """Structures an axial image at a level must show: subarticular recesses, canal, vertebral body front."""
    s = float(anat.disc_s[DISC_INDEX[level]])
    return np.array([anat.landmark(st, level) for st in ("left_subarticular_stenosis", "right_subarticular_stenosis",
                                                         "spinal_canal_stenosis")]
                    + [anat.to_patient(0.0, -anat.body_ap, s)])


def sagittal_stack(anat: Anatomy, rng: np.random.Generator, size: SizeSpec) -> list[SlicePlan]:
    """Oblique sagittal stack around the canal midline, patient right first; the in-plane frame follows the
    scanner more than the spine, so the spine's sagittal tilt shows in the image."""
    normal = -_jitter(rng, _blend(rng, anat.axis(0), _E[0], 0.7, 1.0), 1.0)  # toward patient right
    row, col = _frame(normal, _blend(rng, anat.axis(1), _E[1], 0.0, 0.4))  # posterior, inferior
    matrix, fov = _matrix_fov(rng, size, size.sag_fov)
    gap = rng.uniform(*size.sag_gap)
    ref = anat.to_patient(rng.uniform(-4, 4), anat.canal_u, float(np.mean(anat.disc_s[:5])))
    points, margin = sagittal_points(anat)
    rel = points - ref
    n = int(rng.integers(size.sag_slices[0], size.sag_slices[1] + 1))
    n = max(n, 2 * int(np.ceil(np.abs(rel @ normal).max() / gap)) + 1)  # every labelled structure in the slab
    fov, frac = _placement(rng, [(row, col, rel, margin)], fov, SAG_PLACEMENT)
    offsets = -(np.arange(n) - (n - 1) / 2) * gap  # first slice at patient right
    return _stack(_placed(ref, row, col, fov, frac), normal, row, offsets, matrix, fov,
                  thickness=gap - rng.uniform(0.0, 0.8), gap=gap)


def axial_per_disc(anat: Anatomy, rng: np.random.Generator, size: SizeSpec, levels=LEVELS) -> list[SlicePlan]:
    """One short stack per disc, each tilted to its disc, superior level first, superior slice first."""
    matrix, fov = _matrix_fov(rng, size, size.ax_fov)
    m = int(rng.integers(size.ax_stack_slices[0], size.ax_stack_slices[1] + 1))
    gap = rng.uniform(*size.ax_gap)
    blocks = []
    for level in levels:
        s = float(anat.disc_s[DISC_INDEX[level]])
        ref = anat.to_patient(rng.uniform(-2, 2), anat.canal_u + rng.uniform(-2, 2), s + rng.uniform(-1, 1))
        normal = _jitter(rng, anat.tangent(s), 2.0)
        row, col = _frame(normal, anat.axis(0))  # patient left, posterior
        blocks.append((ref, normal, row, col, axial_points(anat, level) - ref))
    fov, frac = _placement(rng, [(row, col, rel, MARGIN) for _, _, row, col, rel in blocks], fov, AX_PLACEMENT)
    offsets = -(np.arange(m) - (m - 1) / 2) * gap
    return [sl for ref, normal, row, col, _ in blocks
            for sl in _stack(_placed(ref, row, col, fov, frac), normal, row, offsets, matrix, fov,
                             thickness=gap - rng.uniform(0.3, 0.8), gap=gap)]


def axial_continuous(anat: Anatomy, rng: np.random.Generator, size: SizeSpec, levels=LEVELS) -> list[SlicePlan]:
    """One continuous stack from above the first to below the last disc level, superior slice first."""
    normal = _jitter(rng, _blend(rng, anat.axis(2), _E[2], 0.0, 0.6), 1.5)
    row, col = _frame(normal, anat.axis(0))
    s_top, s_bottom = (float(anat.disc_s[DISC_INDEX[lv]]) for lv in (levels[0], levels[-1]))
    ref = anat.to_patient(rng.uniform(-2, 2), anat.canal_u + rng.uniform(-2, 2), (s_top + s_bottom) / 2)
    rel = np.concatenate([axial_points(anat, lv) for lv in levels]) - ref
    matrix, fov = _matrix_fov(rng, size, size.ax_fov)
    fov, frac = _placement(rng, [(row, col, rel, MARGIN)], fov, AX_PLACEMENT)
    top = (anat.to_patient(0, 0, s_top) - ref) @ normal + 10.0
    bottom = (anat.to_patient(0, 0, s_bottom) - ref) @ normal - 10.0
    gap = rng.uniform(*size.ax_continuous_gap)
    offsets = np.arange(top, bottom - gap, -gap)
    return _stack(_placed(ref, row, col, fov, frac), normal, row, offsets, matrix, fov,
                  thickness=min(gap, 5.0) - rng.uniform(0.3, 0.8), gap=gap)


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


def _resize_one(rng: np.random.Generator, slices: list[SlicePlan], landmarks: list[np.ndarray]) -> list[SlicePlan]:
    """Give one slice that no landmark is nearest to a smaller matrix over the same field of view."""
    taken = {min(range(len(slices)), key=lambda i: abs(slices[i].project(p)[2])) for p in landmarks}
    free = [i for i in range(len(slices)) if i not in taken]
    i = int(rng.choice(free)) if free else int(rng.integers(len(slices)))
    sl = slices[i]
    rows = max(16, int(round(sl.rows * 0.75)))
    slices = list(slices)
    slices[i] = replace(sl, rows=rows, cols=rows, pixel=sl.pixel * sl.rows / rows)
    return slices


def orient(sl: SlicePlan, flipped_rows: bool = False, flipped_columns: bool = False,
           transposed: bool = False) -> SlicePlan:
    """The same image plane stored another way: frame transposed, then row and/or column direction negated.

    The centre stays put, so the image covers the same patch of the plane (mirrored, flipped or transposed).
    """
    row, col, rows, cols = sl.row_dir, sl.col_dir, sl.rows, sl.cols
    if transposed:
        row, col, rows, cols = col, row, cols, rows
    return replace(sl, row_dir=-row if flipped_rows else row, col_dir=-col if flipped_columns else col,
                   rows=rows, cols=cols)


def plan_series(anat: Anatomy, rng: np.random.Generator, size: SizeSpec, series_ids: dict[str, int],
                quirks: StudyQuirks) -> list[SeriesPlan]:
    """Slice plans of every series the study has, with instance numbers, quirks and stored intensity range."""
    continuous = bool(rng.random() < 0.4)
    stacks = {
        "sag_t1": lambda: sagittal_stack(anat, rng, size),
        "sag_t2": lambda: sagittal_stack(anat, rng, size),
        "axial": lambda: (axial_continuous if continuous else axial_per_disc)(anat, rng, size),
        "axial2": lambda: (axial_per_disc if continuous else axial_continuous)(anat, rng, size, LEVELS[2:]),
    }
    plans = []
    for role in quirks.roles():
        variant = {kind: role in getattr(quirks, kind) for kind in ORIENTATION_KINDS}
        slices = stacks[role]()
        if variant["reversed_stack"]:
            slices = slices[::-1]
        slices = [orient(sl, variant["flipped_rows"], variant["flipped_columns"], variant["transposed"])
                  for sl in slices]
        if quirks.odd_slice_size == role:  # (labels stay on slices of the series' own grid)
            labelled = [anat.landmark(c, lv) for c in CONDITIONS for lv in LEVELS
                        if role != "axial2" and CONDITION_SERIES[c] == ROLE_DESCRIPTION[role]]
            slices = _resize_one(rng, slices, labelled)
        slices = _number(rng, slices, role in quirks.instance_offset, role in quirks.shuffled_instances)
        rescale = (float(rng.choice([0.5, 2.0])), 0.0) if role in quirks.rescale else None
        contrast = "STIR" if role == "sag_t2" and rng.random() < STIR_RATE else ROLE_CONTRAST[role]
        scale = float(np.exp(rng.uniform(np.log(300.0), np.log(12000.0))))  # 9- to 15-bit stored ranges
        offset = float(rng.uniform(20.0, 800.0)) if rng.random() < PEDESTAL_RATE else 0.0
        plans.append(SeriesPlan(role=role, series_id=series_ids[role], slices=slices, rescale=rescale,
                                scale=scale, offset=offset, contrast=contrast, variant=variant))
    return plans
