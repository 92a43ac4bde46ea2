"""Per-study random lumbar-spine anatomy as an analytic model in LPS patient millimetres.

The spine lies in a *body frame* (X = patient left, Y = posterior, Z = superior) along a lordotic
circular arc whose apex is the frame's origin; a rigid pose (rotation + shift) places that frame in
the scanner. Points are described by curve coordinates ``(w, u, s)``: ``w`` left-right offset, ``u``
posterior offset from the vertebral-body axis, ``s`` arc length (superior positive). Discs are
slabs of ``s``, so each disc is perpendicular to the curve, as real discs are.

Severity is anatomy: every labelled condition narrows its structure at its level by a fraction
drawn from a class-dependent range (:data:`NARROWING_RANGES`); neighbouring ranges overlap a little.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rsna2024.constants import CONDITIONS, LEVELS

# Discs in ascending arc length (inferior to superior); the last two are unlabelled thoracic discs.
DISC_ORDER: tuple[str, ...] = ("l5_s1", "l4_l5", "l3_l4", "l2_l3", "l1_l2", "t12_l1", "t11_t12")
DISC_INDEX: dict[str, int] = {name: i for i, name in enumerate(DISC_ORDER)}
# Landmark structures: the five conditions (the point a coordinate row marks) plus the disc centre.
STRUCTURES: tuple[str, ...] = CONDITIONS + ("disc_center",)
# Fraction of the structure lost per class (Normal/Mild, Moderate, Severe); ranges overlap a little.
NARROWING_RANGES: tuple[tuple[float, float], ...] = ((0.0, 0.36), (0.30, 0.62), (0.56, 0.88))
SIDES: dict[str, float] = {"left": 1.0, "right": -1.0}  # sign of w (LPS +x is patient left)


def rotation_matrix(pitch_deg: float, roll_deg: float, yaw_deg: float) -> np.ndarray:
    """Rotation about patient x (pitch), then y (roll), then z (yaw); angles in degrees."""
    a, b, c = np.deg2rad([pitch_deg, roll_deg, yaw_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class Anatomy:
    """One study's spine: pose, lordotic arc, per-disc positions and structure sizes (mm)."""

    rotation: np.ndarray  # 3x3, body frame -> patient
    shift: np.ndarray  # patient position of the body-frame origin (apex of the arc)
    radius: float  # lordotic arc radius; the centre of curvature lies posterior
    disc_s: np.ndarray  # (7,) disc centres along the arc, DISC_ORDER
    disc_h: np.ndarray  # (7,) disc heights
    column_s: tuple[float, float]  # arc range covered by the vertebral column
    body_w: float  # vertebral body half-width
    body_ap: float  # vertebral body half-depth
    canal_w: float  # spinal canal half-width
    canal_ap: float  # spinal canal half-depth
    canal_u: float  # canal centre, posterior offset
    foramen_w: np.ndarray  # (7,) |w| of the foraminal centres per disc: more lateral caudally
    foramen_u: float
    foramen_ds: float  # foraminal centre above the disc centre
    foramen_rs: float  # foramen half-height (along s)
    foramen_ru: float  # foramen half-depth (along u)
    recess_w: float  # |w| of the subarticular recess centres
    recess_u: float
    recess_r: float
    trunk_y: float  # body-frame Y of the trunk's centre (the trunk is straight, not curved)
    trunk_w: float  # trunk half-width
    trunk_ap: float  # trunk half-depth
    narrowing: dict[str, np.ndarray] = field(default_factory=dict)  # condition -> (7,) fraction lost

    # ------------------------------------------------------------------ coordinates
    def to_body(self, points: np.ndarray) -> np.ndarray:
        """Patient points (N, 3) -> body-frame points (N, 3): X left, Y posterior, Z superior."""
        return (np.asarray(points, dtype=np.float64) - self.shift) @ self.rotation  # R^T (p - t)

    def to_local(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient points (N, 3) -> curve coordinates ``(w, u, s)``, each (N,)."""
        return self.body_to_local(self.to_body(points))

    def body_to_local(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body-frame points (N, 3) -> curve coordinates ``(w, u, s)``, each (N,)."""
        dy = self.radius - q[:, 1]  # centre of curvature at (Y, Z) = (radius, 0)
        dz = q[:, 2]
        d = np.hypot(dy, dz)
        return q[:, 0], self.radius - d, self.radius * np.arctan2(dz, dy)

    def to_patient(self, w, u, s) -> np.ndarray:
        """Curve coordinates (scalars or arrays) -> patient points (..., 3)."""
        w, u, s = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (w, u, s)))
        phi = s / self.radius
        d = self.radius - u
        q = np.stack([w, self.radius - d * np.cos(phi), d * np.sin(phi)], axis=-1)
        return q @ self.rotation.T + self.shift

    def tangent(self, s: float) -> np.ndarray:
        """Unit direction of increasing ``s`` (superior along the spine) in patient space."""
        phi = s / self.radius
        return self.rotation @ np.array([0.0, np.sin(phi), np.cos(phi)])

    def axis(self, body_axis: int) -> np.ndarray:
        """A body-frame axis (0 left, 1 posterior, 2 superior) in patient space."""
        return self.rotation[:, body_axis].copy()

    # ------------------------------------------------------------------ landmarks
    def landmark_local(self, structure: str, level: str) -> tuple[float, float, float]:
        """Curve coordinates of a structure's true landmark at a disc level."""
        s = float(self.disc_s[DISC_INDEX[level]])
        if structure == "disc_center":
            return 0.0, 0.0, s
        if structure == "spinal_canal_stenosis":
            return 0.0, self.canal_u, s
        side = SIDES[structure.split("_", 1)[0]]
        if structure.endswith("neural_foraminal_narrowing"):
            return side * float(self.foramen_w[DISC_INDEX[level]]), self.foramen_u, s + self.foramen_ds
        if structure.endswith("subarticular_stenosis"):
            return side * self.recess_w, self.recess_u, s
        raise ValueError(f"unknown structure {structure!r}; expected one of {list(STRUCTURES)}")

    def landmark(self, structure: str, level: str) -> np.ndarray:
        """Patient-space (LPS mm) true landmark of a structure at a disc level."""
        return self.to_patient(*self.landmark_local(structure, level))

    def landmarks(self) -> dict[tuple[str, str], np.ndarray]:
        """All landmarks: ``(structure, level) -> (3,)`` for every structure and labelled level."""
        return {(st, lv): self.landmark(st, lv) for st in STRUCTURES for lv in LEVELS}

    def parameters(self) -> dict:
        """JSON-friendly summary of the study's anatomy (for ``phantom/studies.json``)."""
        return {
            "rotation": np.round(self.rotation, 6).tolist(),
            "shift": np.round(self.shift, 3).tolist(),
            "radius": round(self.radius, 3),
            "disc_s": dict(zip(DISC_ORDER, np.round(self.disc_s, 3).tolist())),
            "disc_h": dict(zip(DISC_ORDER, np.round(self.disc_h, 3).tolist())),
            "canal": {"half_width": round(self.canal_w, 3), "half_depth": round(self.canal_ap, 3)},
            "narrowing": {c: dict(zip(DISC_ORDER[:5], np.round(v[:5], 4).tolist()))
                          for c, v in self.narrowing.items()},
        }


def sample_anatomy(rng: np.random.Generator, classes: np.ndarray) -> Anatomy:
    """Draw a study's anatomy; ``classes`` is the (25,) true class index per ``TARGET_COLUMNS``."""
    classes = np.asarray(classes).reshape(len(CONDITIONS), len(LEVELS))
    scale = rng.uniform(0.85, 1.15)
    disc_h = scale * rng.uniform(7.5, 12.0, len(DISC_ORDER))
    disc_h[0] *= 0.85
    disc_h[5:] *= 0.75
    body_h = scale * rng.uniform(23.0, 30.0, len(DISC_ORDER) + 1)  # S1, L5, ..., T12, T11
    disc_s = np.empty(len(DISC_ORDER))
    cursor = 0.0  # top of S1
    for k in range(len(DISC_ORDER)):
        disc_s[k] = cursor + disc_h[k] / 2
        cursor += disc_h[k] + body_h[k + 1]
    l3_centre = disc_s[DISC_INDEX["l3_l4"]] + disc_h[2] / 2 + body_h[3] / 2
    offset = l3_centre + rng.uniform(-15.0, 15.0)  # the apex of the lordosis sits near L3
    disc_s -= offset
    column_s = (-offset - 45.0, cursor - offset)

    body_w, body_ap = scale * rng.uniform(20.0, 24.0), scale * rng.uniform(14.5, 17.0)
    canal_w, canal_ap = scale * rng.uniform(10.0, 12.0), scale * rng.uniform(6.5, 8.5)
    canal_u = body_ap + 2.0 + canal_ap
    narrowing = {}
    for ci, cond in enumerate(CONDITIONS):
        frac = np.array([rng.uniform(*NARROWING_RANGES[0]) for _ in DISC_ORDER])
        for li, level in enumerate(LEVELS):
            frac[DISC_INDEX[level]] = rng.uniform(*NARROWING_RANGES[int(classes[ci, li])])
        narrowing[cond] = frac
    trunk_ap = scale * rng.uniform(115.0, 135.0)
    # sagittal tilt (pitch) mostly a few degrees, up to 15; coronal tilt (roll) and twist (yaw) smaller
    pose = rotation_matrix(np.clip(rng.normal(0, 6), -15, 15), rng.uniform(-5, 5), rng.uniform(-6, 6))
    shift = np.array([rng.uniform(-15, 15), rng.uniform(0, 40), rng.uniform(-80, -20)])
    return Anatomy(
        rotation=pose, shift=shift, radius=rng.uniform(220.0, 560.0), disc_s=disc_s, disc_h=disc_h,
        column_s=column_s, body_w=body_w, body_ap=body_ap, canal_w=canal_w, canal_ap=canal_ap,
        canal_u=canal_u, foramen_w=canal_w + scale * (3.0 + 0.9 * (4 - np.arange(len(DISC_ORDER)))),
        foramen_u=canal_u - 0.15 * canal_ap,
        foramen_ds=scale * 2.5, foramen_rs=scale * rng.uniform(6.0, 7.5), foramen_ru=scale * 4.5,
        recess_w=canal_w - 1.8, recess_u=canal_u + 0.2 * canal_ap, recess_r=scale * 3.2,
        trunk_y=canal_u + canal_ap + scale * rng.uniform(50.0, 65.0) - trunk_ap, trunk_w=scale * rng.uniform(130, 160),
        trunk_ap=trunk_ap,
        narrowing=narrowing,
    )
