"""Real-life series quirks of the phantom and the rates at which they occur.

Quirks are decided per study up front (in the main process, from the dataset seed), so that
``ensure_each`` can guarantee every kind occurs at least once in a small test dataset.

Besides the header quirks, four kinds vary how a series is oriented as stored (the *orientation
variants*, see :data:`ORIENTATION_KINDS`): the stack written against the kit's canonical direction
(sagittal left to right, axial foot to head), the row direction negated (image mirrored left-right),
the column direction negated (image upside down) and the in-plane frame transposed (rows along the
other image axis, e.g. superior-inferior on a sagittal image).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

# Series of a study, by role. "axial2" is the optional second Axial T2 series.
SERIES_ROLES: tuple[str, ...] = ("sag_t1", "sag_t2", "axial", "axial2")
# Series a study may lack (as in the real data: two studies lack Sagittal T1, one Sagittal T2).
DROPPABLE_ROLES: tuple[str, ...] = ("sag_t1", "sag_t2")
# Per-series quirks that change how a series is oriented as stored.
ORIENTATION_KINDS: tuple[str, ...] = ("reversed_stack", "flipped_rows", "flipped_columns", "transposed")


def plane_of(role: str) -> str:
    """``"sagittal"`` or ``"axial"``: the plane of a series role."""
    return "sagittal" if role.startswith("sag") else "axial"


@dataclass(frozen=True)
class QuirkRates:
    """Probabilities of each quirk; per study (second_axial, missing_series) or per series (others)."""

    instance_offset: float = 0.10  # instance numbers do not start at 1
    shuffled_instances: float = 0.05  # instance numbers (hence file names) not in position order
    second_axial: float = 0.17  # a second Axial T2 series (real data: 17% of studies)
    missing_series: float = 0.005  # a training study lacks Sagittal T1 or Sagittal T2
    odd_slice_size: float = 0.01  # one slice of the series has a different matrix size
    rescale: float = 0.10  # RescaleSlope/RescaleIntercept present (slope != 1)
    reversed_stack: float = 0.40  # instance order against the canonical one: sagittal L->R, axial F->H
    flipped_rows: float = 0.04  # row direction negated: the image is stored mirrored left-right
    flipped_columns: float = 0.03  # column direction negated: the image is stored upside down
    transposed: float = 0.02  # in-plane frame transposed: rows along the other image axis
    ensure_each: bool = False  # force at least one training study to show each quirk

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "ensure_each" and not 0.0 <= v <= 1.0:
                raise ValueError(f"QuirkRates.{f.name} must be a probability in [0, 1], got {v}")


# Raised rates for test datasets: every quirk appears in a handful of studies.
TEST_QUIRKS = QuirkRates(instance_offset=0.4, shuffled_instances=0.3, second_axial=0.3, missing_series=0.05,
                         odd_slice_size=0.1, rescale=0.2, reversed_stack=0.4, flipped_rows=0.2,
                         flipped_columns=0.2, transposed=0.15, ensure_each=True)


@dataclass(frozen=True)
class StudyQuirks:
    """The quirks one study shows; per-series quirks list the series roles they apply to."""

    second_axial: bool = False
    missing_series: str | None = None
    instance_offset: tuple[str, ...] = ()
    shuffled_instances: tuple[str, ...] = ()
    odd_slice_size: str | None = None
    rescale: tuple[str, ...] = ()
    reversed_stack: tuple[str, ...] = ()
    flipped_rows: tuple[str, ...] = ()
    flipped_columns: tuple[str, ...] = ()
    transposed: tuple[str, ...] = ()

    def roles(self) -> tuple[str, ...]:
        """Series roles present in the study."""
        return tuple(r for r in SERIES_ROLES
                     if r != self.missing_series and (r != "axial2" or self.second_axial))

    def any(self, kind: str) -> bool:
        """Whether the study shows quirk ``kind`` (a field name)."""
        return bool(getattr(self, kind))

    def shows(self, kind: str, plane: str) -> bool:
        """Whether a series of ``plane`` ("sagittal" or "axial") shows the per-series quirk ``kind``."""
        value = getattr(self, kind)
        roles = value if isinstance(value, tuple) else (value,) if isinstance(value, str) else ()
        return any(plane_of(r) == plane for r in roles if r in self.roles())


_PER_SERIES = ("instance_offset", "shuffled_instances", "rescale") + ORIENTATION_KINDS


def _draw(rng: np.random.Generator, rates: QuirkRates, train: bool) -> StudyQuirks:
    second = bool(rng.random() < rates.second_axial)
    missing = str(rng.choice(DROPPABLE_ROLES)) if train and rng.random() < rates.missing_series else None
    q = StudyQuirks(second_axial=second, missing_series=missing)
    roles = q.roles()

    def pick(rate: float) -> tuple[str, ...]:
        return tuple(r for r in roles if rng.random() < rate)

    odd = pick(rates.odd_slice_size)
    return replace(q, odd_slice_size=odd[0] if odd else None,
                   **{kind: pick(getattr(rates, kind)) for kind in _PER_SERIES})


_FORCED = {  # how ensure_each forces a quirk kind on a study; per-series kinds on a sagittal and an axial series
    "second_axial": dict(second_axial=True),
    "missing_series": dict(missing_series="sag_t1"),
    "instance_offset": dict(instance_offset=("sag_t2", "axial")),
    "shuffled_instances": dict(shuffled_instances=("sag_t1", "axial")),
    "odd_slice_size": dict(odd_slice_size="axial"),
    "rescale": dict(rescale=("sag_t2",)),
    "reversed_stack": dict(reversed_stack=("sag_t2", "axial")),
    "flipped_rows": dict(flipped_rows=("sag_t2", "axial")),
    "flipped_columns": dict(flipped_columns=("sag_t2", "axial")),
    "transposed": dict(transposed=("sag_t2", "axial")),
}


def _missing(out: list[StudyQuirks], train_idx: list[int], kind: str) -> bool:
    """Whether the training studies lack quirk ``kind`` (per-series kinds: on any plane they are forced on)."""
    roles = _FORCED[kind][kind]
    if not isinstance(roles, tuple):
        return not any(out[i].any(kind) for i in train_idx)
    return any(not any(out[i].shows(kind, plane_of(r)) for i in train_idx) for r in roles)


def draw_quirks(rng: np.random.Generator, splits: list[str], rates: QuirkRates) -> list[StudyQuirks]:
    """One :class:`StudyQuirks` per study; ``splits`` holds "train" or "test" per study."""
    out = [_draw(rng, rates, split == "train") for split in splits]
    train_idx = [i for i, split in enumerate(splits) if split == "train"]
    if rates.ensure_each and train_idx:
        for j, (kind, forced) in enumerate(_FORCED.items()):
            if getattr(rates, kind) > 0 and _missing(out, train_idx, kind):
                i = train_idx[j % len(train_idx)]
                if kind != "missing_series":  # force per-series quirks on a study that keeps all its series
                    i = next((k for k in train_idx[j % len(train_idx):] + train_idx
                              if out[k].missing_series is None), i)
                current = getattr(out[i], kind)
                value = forced[kind]
                if isinstance(current, tuple):
                    value = tuple(dict.fromkeys(current + value))
                out[i] = replace(out[i], **{kind: value})
                if out[i].missing_series is not None:  # per-series quirks only on series that exist
                    out[i] = _without_role(out[i], out[i].missing_series)
    return out


def _without_role(q: StudyQuirks, role: str) -> StudyQuirks:
    return replace(q, odd_slice_size=None if q.odd_slice_size == role else q.odd_slice_size,
                   **{kind: tuple(r for r in getattr(q, kind) if r != role) for kind in _PER_SERIES})
