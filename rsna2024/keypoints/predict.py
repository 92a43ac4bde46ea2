"""From model output to points: heatmap peaks, back through the resize to the canonical pixels of the sample's
centre slice, then to the stored InstanceNumber and (x, y) of train_label_coordinates.csv and to patient mm."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from rsna2024.constants import CONDITION_NAMES, LEVEL_NAMES
from rsna2024.dicom.series import Series
from rsna2024.keypoints.heatmaps import decode_heatmaps, resize_points
from rsna2024.keypoints.samples import Sample

POINT_COLUMNS = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y", "confidence",
                 "x_mm", "y_mm", "z_mm", "slice_index", "canonical_x", "canonical_y"]


@torch.no_grad()
def predict_heatmaps(model: torch.nn.Module, dataset, device: str | torch.device = "cpu", batch_size: int = 8,
                     num_workers: int = 0) -> np.ndarray:
    """Model output maps ``(N, K, H, W)`` float32 for every item of ``dataset`` (in order), eval mode."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    out = []
    for batch in loader:
        out.append(model(batch["image"].to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)


def decode_to_canonical(maps, input_shape: Sequence[int], image_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of ``maps`` (K, H, W) on the input grid -> canonical (x, y) (K, 2) on an image of ``image_shape``
    (rows, cols), and the confidences (K,)."""
    points, conf = decode_heatmaps(maps)
    return resize_points(points, input_shape, image_shape), conf


def sample_rows(sample: Sample, series: Series, points: np.ndarray, confidence: np.ndarray) -> list[dict]:
    """Rows (see POINT_COLUMNS) of a sample's canonical centre-slice points: the stored InstanceNumber and
    (x, y), and the patient point in mm."""
    rows = []
    for (condition, level), (xc, yc), conf in zip(sample.targets, points, confidence):
        inst, x, y = series.canonical_to_stored(sample.centre, xc, yc)
        mm = np.asarray(series.pixel_to_patient(sample.centre, xc, yc)).reshape(3)
        rows.append({"study_id": sample.study_id, "series_id": sample.series_id, "instance_number": int(inst),
                     "condition": CONDITION_NAMES[condition], "level": LEVEL_NAMES[level], "x": float(x),
                     "y": float(y), "confidence": float(conf), "x_mm": mm[0], "y_mm": mm[1], "z_mm": mm[2],
                     "slice_index": sample.centre, "canonical_x": float(xc), "canonical_y": float(yc)})
    return rows


def predicted_points(samples: Sequence[Sample], maps: np.ndarray, studies, input_shape: Sequence[int]) -> pd.DataFrame:
    """Decode the output ``maps`` (N, K, H, W) of ``samples`` into a table of POINT_COLUMNS."""
    rows = []
    for sample, m in zip(samples, maps):
        series = studies.load(sample.study_id, sample.series_id)
        points, conf = decode_to_canonical(m, input_shape, series.pixels.shape[1:])
        rows.extend(sample_rows(sample, series, points, conf))
    return pd.DataFrame(rows, columns=POINT_COLUMNS)
