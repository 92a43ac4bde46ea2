"""A montage of one phantom study's series with its label points (matplotlib, Agg backend).

Reads the written DICOM files with pydicom and the coordinate CSV, so it shows exactly what a
pipeline will read. Panels: mid-sagittal T2 with the spinal points, the Sagittal T1 slices
holding the left and the right foraminal points, and the axial slice of the L4/L5 subarticular points.
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
from rsna2024.utils.io import atomic_path

# (title, series description, condition names of the points shown, level filter or None)
PANELS = (
    ("Sagittal T2/STIR: spinal canal", SAGITTAL_T2, ("Spinal Canal Stenosis",), None),
    ("Sagittal T1: left foramina", SAGITTAL_T1, ("Left Neural Foraminal Narrowing",), None),
    ("Sagittal T1: right foramina", SAGITTAL_T1, ("Right Neural Foraminal Narrowing",), None),
    ("Axial T2 at L4/L5: subarticular", AXIAL_T2, ("Left Subarticular Stenosis", "Right Subarticular Stenosis"),
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


def _image(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    img = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1.0)) \
        + float(getattr(ds, "RescaleIntercept", 0.0))
    return img


def draw_preview(data: str | Path, png: str | Path, study_id: int | None = None, dpi: int = 80) -> Path:
    """Draw the montage of ``study_id`` (default: the first training study with coordinates) to ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = Path(data)
    coords = pd.read_csv(data / "train_label_coordinates.csv")
    labels = pd.read_csv(data / "train.csv").set_index("study_id")
    if coords.empty:
        raise DataError(f"{data / 'train_label_coordinates.csv'} has no rows: nothing to preview")
    study_id = int(coords.study_id.iloc[0]) if study_id is None else int(study_id)
    rows = coords[coords.study_id == study_id]
    if rows.empty:
        raise DataError(f"study {study_id} has no rows in {data / 'train_label_coordinates.csv'}")
    series = pd.read_csv(data / "train_series_descriptions.csv")
    series = series[series.study_id == study_id]

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 4.4), facecolor="black")
    for ax, (title, description, conditions, level) in zip(axes, PANELS):
        ax.set_axis_off()
        ax.set_title(title, color="white", fontsize=10)
        pts = rows[rows.condition.isin(conditions) & rows.series_id.isin(
            series[series.series_description == description].series_id)]
        if level is not None:
            pts = pts[pts.level == level]
        if pts.empty:
            ax.text(0.5, 0.5, "no labelled series", color="white", ha="center", transform=ax.transAxes)
            continue
        instance = int(pts.instance_number.mode().iloc[0])
        series_id = int(pts.series_id.iloc[0])
        img = _image(data / "train_images" / str(study_id) / str(series_id) / f"{instance}.dcm")
        ax.imshow(img, cmap="gray", vmin=0, vmax=np.percentile(img, 99.5))
        for _, p in pts.iterrows():  # points of neighbouring instances: small markers at their (x, y)
            column = f"{p.condition.lower().replace(' ', '_')}_{p.level.lower().replace('/', '_')}"
            label = labels.at[study_id, column] if column in labels.columns else None
            ax.plot(p.x, p.y, "o", ms=6 if p.instance_number == instance else 3, mfc="none", mew=1.5,
                    color=SEVERITY_COLOURS.get(label, "#1f77b4"))
            if level is None:
                ax.text(p.x + img.shape[1] * 0.03, p.y, p.level, color="yellow", fontsize=7, va="center")
    fig.suptitle(f"phantom study {study_id}  (circles: green normal/mild, orange moderate, red severe; "
                 "small: point on a neighbouring slice)",
                 color="white", fontsize=10)
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
