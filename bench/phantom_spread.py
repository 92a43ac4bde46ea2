"""Phantom label spread: how widely label points spread over the image, and what a constant answer costs.

Writes ``--studies`` training studies at ``--size`` (``--seed``, ``--workers``) into a temporary folder (or
reads the phantom in ``--data``), then from ``train_label_coordinates.csv`` and the DICOM files prints:

- per condition and level the standard deviation of x / columns and y / rows of the labelled instance (the
  25 x 2 table) and its minimum; target >= 0.10 on each axis (real data: about 70 px on 384-640 px images);
- the error of the constant answer that puts each point at its mean normalised position (per condition and
  level, over all studies) on the true labelled instance, in patient mm through the kit's reader geometry
  (``rsna2024.dicom.read_series(...).to_patient``): median per series type and overall; target >= 15 mm;
- the same figures from the generator's own slice plans, and the largest difference between the planned and
  the written coordinates (the two must agree).

    .venv/bin/python bench/phantom_spread.py --studies 200 --size full --seed 123 --workers 2
    .venv/bin/python bench/phantom_spread.py --studies 200 --size small --seed 123 --workers 2
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from rsna2024.dicom import read_series
from rsna2024.synthetic.generate import generate_dataset
from rsna2024.synthetic.spread import guess_errors, planned_coordinates, series_type, spread_table


def written_coordinates(data: Path) -> tuple[pd.DataFrame, Callable[[int, float, float], np.ndarray]]:
    """Coordinate rows with the labelled instance's rows and cols (from its header), and a mapping
    ``(row position, x, y) -> patient mm`` through the kit's reader."""
    coords = pd.read_csv(data / "train_label_coordinates.csv")
    folder = {(r.study_id, r.series_id): data / "train_images" / str(r.study_id) / str(r.series_id)
              for r in coords[["study_id", "series_id"]].drop_duplicates().itertuples()}
    shape = {}
    for r in coords[["study_id", "series_id", "instance_number"]].drop_duplicates().itertuples():
        ds = pydicom.dcmread(folder[(r.study_id, r.series_id)] / f"{r.instance_number}.dcm", stop_before_pixels=True)
        shape[(r.study_id, r.series_id, r.instance_number)] = (int(ds.Rows), int(ds.Columns))
    size = np.array([shape[k] for k in zip(coords.study_id, coords.series_id, coords.instance_number)])
    coords["rows"], coords["cols"] = size[:, 0], size[:, 1]

    keys = list(zip(coords.study_id, coords.series_id))
    cached = None  # one series in memory at a time: the rows are sorted by study and series

    def to_patient(i: int, x: float, y: float) -> np.ndarray:
        nonlocal cached
        if cached is None or cached[0] != keys[i]:
            cached = (keys[i], read_series(folder[keys[i]]))
        return cached[1].to_patient(int(coords.instance_number.iat[i]), x, y)

    return coords, to_patient


def report(name: str, coords: pd.DataFrame, errors: np.ndarray, min_spread: float, min_error: float,
           tables: bool = True) -> bool:
    """Print the spread table and the constant answer's errors; return whether both targets are met."""
    table = spread_table(coords)
    print(f"\n{name}: {coords.study_id.nunique()} studies, {len(coords)} label points")
    if tables:
        print("std of x / columns and y / rows per condition and level:")
        print(table.round(3).to_string())
    low = table.min()
    print(f"minimum: x {low.x:.3f}, y {low.y:.3f} (target >= {min_spread})")
    frame = coords.assign(error=errors, kind=series_type(coords).to_numpy())
    print("mean-position answer on the true instance, error (mm): median [25th-75th percentile]")
    for kind, part in [*frame.groupby("kind"), ("overall", frame)]:
        q = np.percentile(part.error, [25, 50, 75])
        print(f"  {kind:<18} {q[1]:6.1f}  [{q[0]:.1f}-{q[2]:.1f}]")
    med = float(np.median(errors))
    ok = bool(low.min() >= min_spread and frame.groupby("kind").error.median().min() >= min_error)
    print(f"targets: spread >= {min_spread} on both axes; median error >= {min_error} mm per series type "
          f"(overall {med:.1f} mm) -> {'met' if ok else 'MISSED'}")
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=200)
    p.add_argument("--size", choices=["small", "full"], default="full")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", type=Path, default=None, help="an existing phantom written with --studies, --size and "
                                                           "--seed and no test studies (skips generation)")
    p.add_argument("--min-spread", type=float, default=0.10)
    p.add_argument("--min-error-mm", type=float, default=15.0)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "phantom"
            start = time.perf_counter()
            generate_dataset(data, studies=args.studies, test_studies=0, seed=args.seed, size=args.size,
                             workers=args.workers)
            seconds = time.perf_counter() - start
            print(f"generated {args.studies} {args.size} studies in {seconds:.0f} s "
                  f"({seconds / args.studies:.2f} s/study, {args.workers} workers)")
        start = time.perf_counter()
        coords, to_patient = written_coordinates(data)
        written_ok = report("written phantom (DICOM headers, rsna2024.dicom.read_series)", coords,
                            guess_errors(coords, to_patient), args.min_spread, args.min_error_mm)
        print(f"(read and measured in {time.perf_counter() - start:.0f} s)")

    planned, planes = planned_coordinates(args.studies, args.size, seed=args.seed)
    planned_ok = report("planned (the generator's slice plans, nothing rendered)", planned,
                        guess_errors(planned, lambda i, x, y: planes[i].to_patient(x, y)), args.min_spread,
                        args.min_error_mm, tables=False)
    key = ["study_id", "series_id", "instance_number", "condition", "level"]
    both = coords.merge(planned, on=key, suffixes=("", "_plan"))
    if len(both) != len(coords) or len(both) != len(planned):
        print(f"planned and written rows differ: {len(coords)} written, {len(planned)} planned, {len(both)} shared")
        return 1
    print(f"\nplanned vs written: {len(both)} rows, largest |dx| {np.abs(both.x - both.x_plan).max():.2e} px, "
          f"|dy| {np.abs(both.y - both.y_plan).max():.2e} px")
    return 0 if written_ok and planned_ok else 1


if __name__ == "__main__":
    sys.exit(main())
