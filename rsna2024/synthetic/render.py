"""Render MR slices by sampling the analytic anatomy on a slice plane (vectorised numpy).

:func:`tissue_map` labels every sample point with a tissue; :func:`render_slice` turns labels into
T1 or T2 intensities, softens edges, applies the study's bias field, Rician noise and intensity scale;
:func:`render_plane` renders a slice plan, interpolating matrices above ``ACQUIRED_MAX`` from half the matrix.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from rsna2024.synthetic.anatomy import Anatomy

if TYPE_CHECKING:
    from rsna2024.synthetic.series import SlicePlan

ACQUIRED_MAX = 640  # larger matrices are reconstructed from an acquisition of half the matrix, as scanners do

AIR, FAT, MUSCLE, VISCERA, MARROW, CORTEX, ANNULUS, NUCLEUS, CSF, NERVE, STENOSIS, VESSEL = range(12)
TISSUES: tuple[str, ...] = ("air", "fat", "muscle", "viscera", "marrow", "cortex", "annulus", "nucleus",
                            "csf", "nerve", "stenosis", "vessel")
# Relative signal per tissue: fluid bright on T2, fat bright on T1 (dark on STIR), disc nucleus bright on T2.
CONTRASTS: dict[str, np.ndarray] = {
    "T1": np.array([0.0, 0.95, 0.32, 0.45, 0.62, 0.08, 0.30, 0.38, 0.12, 0.35, 0.22, 0.04]),
    "T2": np.array([0.0, 0.60, 0.22, 0.40, 0.42, 0.06, 0.18, 0.85, 1.00, 0.30, 0.10, 0.04]),
    "STIR": np.array([0.0, 0.08, 0.20, 0.35, 0.18, 0.05, 0.15, 0.80, 1.00, 0.30, 0.10, 0.04]),  # fat suppressed
}


@dataclass(frozen=True)
class Appearance:
    """Per-study imaging parameters: tissue jitter, bias field, noise level."""

    tissue_gain: np.ndarray  # (len(TISSUES),) multiplicative jitter of each tissue's signal
    bias_linear: np.ndarray  # (3,) per 150 mm
    bias_quadratic: float
    bias_centre: np.ndarray  # (3,) patient mm
    noise: float  # Rician sigma relative to a signal of 1

    @classmethod
    def sample(cls, rng: np.random.Generator, centre: np.ndarray) -> Appearance:
        """Draw a study's appearance; ``centre`` is where the bias field is 1."""
        return cls(tissue_gain=rng.uniform(0.9, 1.1, len(TISSUES)), bias_linear=rng.normal(0, 0.15, 3),
                   bias_quadratic=rng.uniform(-0.35, 0.0), bias_centre=np.asarray(centre, float),
                   noise=rng.uniform(0.01, 0.06))

    def bias(self, points: np.ndarray) -> np.ndarray:
        """Smooth multiplicative bias field at patient points (N, 3)."""
        rel = (points - self.bias_centre) / 150.0
        return np.exp(rel @ self.bias_linear + self.bias_quadratic * np.einsum("ij,ij->i", rel, rel))


def _inside(a: np.ndarray, b: np.ndarray, ra, rb) -> np.ndarray:
    """Points with offsets (a, b) inside the ellipse of radii (ra, rb)."""
    return (a / ra) ** 2 + (b / rb) ** 2 < 1.0


def _narrowed(lab: np.ndarray, nominal: np.ndarray, kept: np.ndarray, fill: int) -> None:
    """Paint ``fill`` inside the nominal structure and stenosis tissue where narrowing removed it."""
    lab[nominal & kept] = fill
    lab[nominal & ~kept] = STENOSIS


def tissue_map(anat: Anatomy, points: np.ndarray) -> np.ndarray:
    """Tissue index (uint8) at each patient point (N, 3)."""
    q = anat.to_body(points)
    w, u, s = anat.body_to_local(q)
    lab = np.full(len(w), AIR, dtype=np.uint8)
    aw = np.abs(w)

    # Trunk (straight, in the body frame): a fat-rimmed ellipse of viscera and the aorta;
    # psoas and paraspinal muscles follow the spine.
    trunk_y = q[:, 1] - anat.trunk_y
    lab[_inside(q[:, 0], trunk_y, anat.trunk_w, anat.trunk_ap)] = FAT
    inner = _inside(q[:, 0], trunk_y, anat.trunk_w - 14, anat.trunk_ap - 12)
    lab[inner] = VISCERA
    lab[inner & (u > 0.3 * anat.body_ap) & _inside(w, u - anat.canal_u - 10.0, 62.0, 70.0)] = MUSCLE  # paraspinals
    psoas_r = np.clip(9.0 - 0.06 * s, 3.0, 18.0)
    lab[_inside(aw - (anat.body_w + 9.0), u - 2.0, psoas_r, psoas_r * 1.1)] = MUSCLE
    lab[_inside(q[:, 0] - 12.0, q[:, 1] + anat.body_ap + 13.0, 10.0, 10.0)] = VESSEL

    # The vertebral column and its canal, computed only where they can be (a box in curve coordinates).
    reach = max(1.03 * anat.body_w, anat.canal_w + 12.0, float(anat.foramen_w.max()) + 5.5,
                anat.recess_w + anat.recess_r) + 1.0
    near = np.flatnonzero((s > anat.column_s[0]) & (s < anat.column_s[1]) & (aw < reach)
                          & (u > -1.03 * anat.body_ap - 1.0) & (u < anat.canal_u + anat.canal_ap + 33.0))
    sub = lab[near]
    _column(anat, sub, w[near], u[near], s[near])
    lab[near] = sub
    return lab


def _column(anat: Anatomy, lab: np.ndarray, w: np.ndarray, u: np.ndarray, s: np.ndarray) -> None:
    """Paint vertebrae, discs, posterior elements, canal, foramina and recesses into ``lab`` (points inside
    the column's arc range)."""
    aw = np.abs(w)
    left = w >= 0
    # Nearest disc k, offset ds from its centre.
    mids = (anat.disc_s[1:] + anat.disc_s[:-1]) / 2
    k = np.searchsorted(mids, s)
    ds = s - anat.disc_s[k]
    half_h = anat.disc_h[k] / 2
    in_disc = np.abs(ds) < half_h
    body_e = (w / anat.body_w) ** 2 + (u / anat.body_ap) ** 2
    body = (body_e < 1.0) & ~in_disc
    lab[body] = MARROW
    lab[body & ((body_e > 0.82) | (np.abs(ds) < half_h + 1.2))] = CORTEX
    disc = in_disc & (body_e < 1.06)
    lab[disc] = ANNULUS
    lab[disc & ((w / (0.55 * anat.body_w)) ** 2 + (u / (0.5 * anat.body_ap)) ** 2 < 1)
        & (np.abs(ds) < 0.7 * half_h)] = NUCLEUS

    # Posterior elements: pedicle/facet columns, laminar arch, spinous processes.
    cu = u - anat.canal_u
    pedicle = (aw > anat.canal_w - 1) & (aw < anat.canal_w + 12) & (u > anat.body_ap - 4) & (cu < 0.7 * anat.canal_ap)
    lab[pedicle] = MARROW
    arch = _inside(w, cu, anat.canal_w + 6, anat.canal_ap + 6) & (cu > 0.2 * anat.canal_ap)
    lab[arch] = MARROW
    spinous = (aw < 3.5) & (cu > anat.canal_ap) & (cu < anat.canal_ap + 32) & (np.abs(ds) > half_h + 2)
    lab[spinous] = MARROW

    # Spinal canal: CSF narrowed in depth around each disc by the spinal stenosis fraction.
    bump = np.exp(-((ds / (1.6 * half_h)) ** 2))
    canal = _inside(w, cu, anat.canal_w, anat.canal_ap)
    depth = anat.canal_ap * (1 - anat.narrowing["spinal_canal_stenosis"][k] * bump)
    _narrowed(lab, canal, _inside(w, cu, anat.canal_w, depth), CSF)
    roots = canal & (lab == CSF) & (_inside(aw - 0.45 * anat.canal_w, cu - 0.35 * anat.canal_ap, 1.3, 1.3))
    lab[roots] = NERVE

    # Neural foramina: fat-filled keyholes between the pedicles, area reduced by the narrowing.
    for_n = np.where(left, anat.narrowing["left_neural_foraminal_narrowing"][k],
                     anat.narrowing["right_neural_foraminal_narrowing"][k])
    fs, fu = ds - anat.foramen_ds, u - anat.foramen_u
    taper = np.clip(1 - ((aw - anat.foramen_w[k]) / 5.5) ** 2, 1e-9, None)
    foramen = _inside(fs, fu, anat.foramen_rs * np.sqrt(taper), anat.foramen_ru)
    keep = np.sqrt(1 - for_n)
    _narrowed(lab, foramen, _inside(fs, fu, anat.foramen_rs * keep, anat.foramen_ru * keep), FAT)
    lab[foramen & _inside(fs - 0.45 * anat.foramen_rs * keep, fu, 1.8, 1.8)] = NERVE

    # Subarticular recesses (lateral recess, both sides) around each disc; medial to the foramina,
    # painted last where the two meet (the nerve root runs from the recess into the foramen).
    near_disc = np.abs(ds) < half_h + 7
    rec_n = np.where(left, anat.narrowing["left_subarticular_stenosis"][k],
                     anat.narrowing["right_subarticular_stenosis"][k]) * bump
    rw, ru = aw - anat.recess_w, u - anat.recess_u
    recess = near_disc & _inside(rw, ru, anat.recess_r, anat.recess_r)
    _narrowed(lab, recess, _inside(rw, ru, anat.recess_r * (1 - rec_n), anat.recess_r), CSF)
    lab[recess & _inside(rw, ru, 1.1, 1.1) & (rec_n < 0.7)] = NERVE


def _soften(img: np.ndarray) -> np.ndarray:
    """3x3 box blur (edge-replicated): partial-volume edges."""
    p = np.pad(img, 1, mode="edge")
    acc = np.zeros_like(img)
    for dy in range(3):
        for dx in range(3):
            acc += p[dy:dy + img.shape[0], dx:dx + img.shape[1]]
    return acc / 9.0


def render_slice(anat: Anatomy, look: Appearance, points: np.ndarray, shape: tuple[int, int], contrast: str,
                 scale: float, rng: np.random.Generator) -> np.ndarray:
    """Stored-intensity image (float, >= 0) of the plane sampled at ``points`` (rows*cols, 3)."""
    table = CONTRASTS[contrast] * look.tissue_gain
    img = _soften(table[tissue_map(anat, points)].reshape(shape))
    img *= look.bias(points).reshape(shape)
    noise = look.noise
    img = np.hypot(img + rng.normal(0, noise, shape), rng.normal(0, noise, shape))
    return img * scale


def upsample2(img: np.ndarray) -> np.ndarray:
    """Linear interpolation to twice the matrix over the same field of view (pixel centres kept aligned)."""
    for axis in (0, 1):
        a = np.moveaxis(img, axis, 0)
        p = np.concatenate([a[:1], a, a[-1:]])  # edge-replicated
        even, odd = 0.75 * p[1:-1] + 0.25 * p[:-2], 0.75 * p[1:-1] + 0.25 * p[2:]
        img = np.moveaxis(np.stack([even, odd], axis=1).reshape(-1, *a.shape[1:]), 0, axis)
    return img


def render_plane(anat: Anatomy, look: Appearance, plan: SlicePlan, contrast: str, scale: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Stored-intensity image of a slice plan; a matrix above ``ACQUIRED_MAX`` (even) is rendered at half the
    matrix with twice the pixel size and interpolated, like a scanner's zero-filled reconstruction."""
    if max(plan.rows, plan.cols) <= ACQUIRED_MAX or plan.rows % 2 or plan.cols % 2:
        return render_slice(anat, look, plan.points(), (plan.rows, plan.cols), contrast, scale, rng)
    coarse = replace(plan, rows=plan.rows // 2, cols=plan.cols // 2, pixel=plan.pixel * 2)
    return upsample2(render_slice(anat, look, coarse.points(), (coarse.rows, coarse.cols), contrast, scale, rng))
