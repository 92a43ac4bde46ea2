"""Ingestion speed, side by side: raw pixel bytes, pydicom decoding, the kit's reader, the cache.

Builds ``--series`` series of ``--slices`` slices of ``--size`` x ``--size`` pixels (real DICOM files
written with the kit's slice writer) and prints slices/s of

- raw bytes:     ``np.fromfile`` at the PixelData offset (the physical limit of reading the files),
- pydicom:       ``pydicom.dcmread(f).pixel_array`` per file (decoding alone, no geometry, no volume),
- read_series:   the kit's reader building float32 volumes with geometry,
- cache read:    ``load_cached_series`` + reading the pixels into memory (what later stages do),

each as the best of ``--repeats`` warm runs (the steps taking turns), with ratios to pydicom.
Targets: read_series >= 0.8x
pydicom, cache read >= 5x pydicom.

    .venv/bin/python bench/ingest.py --series 4 --slices 32 --size 512
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from rsna2024.dicom import read_series
from rsna2024.dicom.cache import load_cached_series, preprocess
from rsna2024.synthetic.dicom_writer import SliceGeometry, write_mr_slice

SYNTAXES = {"explicit": pydicom.uid.ExplicitVRLittleEndian, "rle": pydicom.uid.RLELossless,
            "jpeg2000": pydicom.uid.JPEG2000Lossless}
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def build(data: Path, n_series: int, n_slices: int, size: int, syntax: str) -> list[tuple[int, int, Path]]:
    """Write the series in Kaggle layout under ``data``; return (study, series, folder) triples."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n_series):
        study, series = 1000 + i, 2000 + i
        folder = data / "train_images" / str(study) / str(series)
        for k in range(n_slices):
            img = (1500 + 800 * np.sin(xx / (17 + k)) * np.cos(yy / 23) + rng.normal(0, 60, (size, size))).clip(0)
            write_mr_slice(folder / f"{k + 1}.dcm", img, SliceGeometry((k * 4.0, -100, 100), (0, 1, 0), (0, 0, -1),
                                                                       (0.5, 0.5), 4.0),
                           instance_number=k + 1, series_description="Sagittal T1", study_id=study, series_id=series,
                           transfer_syntax=SYNTAXES[syntax])
        out.append((study, series, folder))
    pd.DataFrame([(s, r, "Sagittal T1") for s, r, _ in out],
                 columns=["study_id", "series_id", "series_description"]).to_csv(
        data / "train_series_descriptions.csv", index=False)
    return out


def pixel_offset(path: Path) -> int:
    """Byte offset of the (uncompressed, explicit VR OW) PixelData value in a file written here."""
    raw = path.read_bytes()
    return raw.rindex(_PIXEL_DATA_TAG + b"OW") + 12


def best_rates(steps: dict, n_slices: int, repeats: int) -> dict[str, float]:
    """Slices per second of each step: the fastest of ``repeats`` runs after one warm-up run, the
    steps taking turns within each repeat so they all see the same machine state."""
    for fn in steps.values():
        fn()
    best = {name: float("inf") for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: n_slices / seconds for name, seconds in best.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=4)
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--syntax", choices=sorted(SYNTAXES), default="explicit")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rsna2024-bench-") as tmp:
        data = Path(tmp) / "data"
        series = build(data, args.series, args.slices, args.size, args.syntax)
        files = [f for _, _, folder in series for f in sorted(folder.glob("*.dcm"))]
        n = len(files)
        steps = {}
        if args.syntax == "explicit":
            offsets = [pixel_offset(f) for f in files]
            count = args.size * args.size
            steps["raw bytes (np.fromfile)"] = lambda: [np.fromfile(f, dtype="<u2", count=count, offset=o)
                                                        for f, o in zip(files, offsets)]
        steps["pydicom dcmread + pixel_array"] = lambda: [pydicom.dcmread(f).pixel_array for f in files]
        steps["kit read_series (float32 volume)"] = lambda: [read_series(folder) for _, _, folder in series]
        t = time.perf_counter()
        index = preprocess(data, cache_root=Path(tmp) / "cache", workers=1)
        preprocess_rate = n / (time.perf_counter() - t)
        steps["cache read (load_cached_series)"] = lambda: [np.array(load_cached_series(index, s, r).pixels)
                                                            for s, r, _ in series]
        rates = best_rates(steps, n, args.repeats)

    base = rates["pydicom dcmread + pixel_array"]
    print(f"{args.series} series x {args.slices} slices of {args.size}x{args.size}, {args.syntax}, "
          f"best of {args.repeats}")
    print(f"{'step':36s} {'slices/s':>10s} {'x pydicom':>10s}")
    for name, rate in rates.items():
        print(f"{name:36s} {rate:10.0f} {rate / base:10.2f}")
    print(f"{'(preprocess, one pass, 1 worker)':36s} {preprocess_rate:10.0f} {preprocess_rate / base:10.2f}")
    print(f"targets: read_series >= 0.8x pydicom: {rates['kit read_series (float32 volume)'] / base:.2f}x; "
          f"cache read >= 5x pydicom: {rates['cache read (load_cached_series)'] / base:.2f}x")


if __name__ == "__main__":
    main()
