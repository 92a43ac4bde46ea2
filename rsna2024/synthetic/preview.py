"""A montage of several phantom studies side by side with their label points (matplotlib, Agg backend).

Reads the written DICOM files with pydicom and the coordinate CSV, so it shows exactly what a
pipeline will read: images as stored, so mirrored, flipped or transposed series show as such. One
column per study; rows: the Sagittal T2/STIR slice with the spinal points, the Sagittal T1 slice
with the left foraminal points, and the axial slice of the L4/L5 subarticular points.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from PIL import Image

from rsna2024.constants import AXIAL_T2, SAGITTAL_T1, SAGITTAL_T2
from rsna2024.errors import DataError
from rsna2024.synthetic.series import direction_name
from rsna2024.utils.io import atomic_path

# (row title, series description, condition names of the points shown, level filter or None)
PANELS = (
    ("Sag T2/STIR, canal", SAGITTAL_T2, ("Spinal Canal Stenosis",), None),
    ("Sag T1, left foramina", SAGITTAL_T1, ("Left Neural Foraminal Narrowing",), None),
    ("Axial T2 L4/L5, recesses", AXIAL_T2, ("Left Subarticular Stenosis", "Right Subarticular Stenosis"),
     "L4/L5"),
)
SEVERITY_COLOURS = {"Normal/Mild": "#2ca02c", "Moderate": "#ff7f0e", "Severe": "#d62728"}


def _palette() -> Image.Image:
    """48 grey levels plus the montage's marker and text colours."""
    greys = [(v, v, v) for v in np.linspace(0, 255, 48).astype(int)]
    marks = [tuple(int(h[i:i + 2], 16) for i in (1, 3, 5)) for h in SEVERITY_COLOURS.values()]
    colours = greys + marks + [(255, 255, 0), (31, 119, 180)]
    pal = Image.new("P", (1, 1))
    pal.putpalette([c for rgb in colours for c in rgb] + [0] * 3 * (256 - len(colours)))
    return pal


def _image(path: Path) -> tuple[np.ndarray, str]:
    """Pixel values (rescaled) and a caption: matrix, pixel spacing, the directions x and y run toward."""
    ds = pydicom.dcmread(path)
    img = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1.0)) \
        + float(getattr(ds, "RescaleIntercept", 0.0))
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    toward = "".join(direction_name(v)[0].upper() for v in (iop[:3], iop[3:]))
    return img, f"{ds.Rows}px {float(ds.PixelSpacing[0]):.2f}mm  x>{toward[0]} y>{toward[1]}"


def _panel(ax, data: Path, study_id: int, rows: pd.DataFrame, series: pd.DataFrame, labels: pd.DataFrame,
           description: str, conditions: tuple[str, ...], level: str | None) -> None:
    ax.set_axis_off()
    pts = rows[rows.condition.isin(conditions) & rows.series_id.isin(
        series[series.series_description == description].series_id)]
    if level is not None:
        pts = pts[pts.level == level]
    if pts.empty:
        ax.text(0.5, 0.5, "no labelled series", color="white", ha="center", transform=ax.transAxes)
        return
    instance = int(pts.instance_number.mode().iloc[0])
    series_id = int(pts.series_id.iloc[0])
    img, caption = _image(data / "train_images" / str(study_id) / str(series_id) / f"{instance}.dcm")
    ax.imshow(img, cmap="gray", vmin=np.percentile(img, 0.5), vmax=np.percentile(img, 99.5))
    ax.text(0.02, 0.02, caption, color="yellow", fontsize=6.5, transform=ax.transAxes)
    for _, p in pts.iterrows():  # points of neighbouring instances: small markers at their (x, y)
        column = f"{p.condition.lower().replace(' ', '_')}_{p.level.lower().replace('/', '_')}"
        label = labels.at[study_id, column] if column in labels.columns else None
        ax.plot(p.x, p.y, "o", ms=5 if p.instance_number == instance else 2.5, mfc="none", mew=1.2,
                color=SEVERITY_COLOURS.get(label, "#1f77b4"))


def draw_preview(data: str | Path, png: str | Path, study_ids: list[int] | None = None, studies: int = 4,
                 dpi: int = 80) -> Path:
    """Draw the montage of ``study_ids`` (default: the first ``studies`` training studies with coordinates,
    preferring those with every series type) to ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = Path(data)
    coords = pd.read_csv(data / "train_label_coordinates.csv")
    labels = pd.read_csv(data / "train.csv").set_index("study_id")
    if coords.empty:
        raise DataError(f"{data / 'train_label_coordinates.csv'} has no rows: nothing to preview")
    series = pd.read_csv(data / "train_series_descriptions.csv")
    if study_ids is None:  # the first studies, those with every series type labelled first
        kinds = coords.merge(series, on=["study_id", "series_id"]).groupby("study_id", sort=False) \
            .series_description.nunique()
        study_ids = list(kinds.sort_values(ascending=False, kind="stable").index[:studies])

    fig, axes = plt.subplots(len(PANELS), len(study_ids), figsize=(2.6 * len(study_ids), 2.75 * len(PANELS)),
                             facecolor="black", squeeze=False)
    for col, study_id in enumerate(study_ids):
        rows = coords[coords.study_id == study_id]
        if rows.empty:
            raise DataError(f"study {study_id} has no rows in {data / 'train_label_coordinates.csv'}")
        for ax, (title, description, conditions, level) in zip(axes[:, col], PANELS):
            _panel(ax, data, int(study_id), rows, series[series.study_id == study_id], labels, description,
                   conditions, level)
            ax.set_title(f"{study_id}: {title}", color="white", fontsize=7.5)
    fig.suptitle("phantom studies as stored (circles: green normal/mild, orange moderate, red severe; "
                 "small: point on a neighbouring slice)", color="white", fontsize=8.5)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="black")
    plt.close(fig)
    buffer.seek(0)
    png = Path(png)
    with atomic_path(png) as tmp:  # a small fixed palette keeps the file README-sized
        Image.open(buffer).convert("RGB").quantize(palette=_palette(), dither=Image.Dither.NONE) \
            .save(tmp, format="PNG", optimize=True)
    return png
