"""Phantom generation speed, side by side: ``--size small`` and ``--size full``.

Writes ``--small-studies`` small studies and ``--full-studies`` full-size studies (train only, plus
no test studies) with ``--workers`` joblib workers into a temporary folder, and prints studies/s,
slices/s and MB/s per size with the ratio of full to small. Target: 20 small studies in under 30 s
on 2 cores.

    .venv/bin/python bench/synth.py --small-studies 20 --full-studies 3 --workers 2
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rsna2024.synthetic.generate import generate_dataset


def run(size: str, studies: int, workers: int, root: Path) -> dict:
    """Generate one dataset; return its timing and volume."""
    out = root / size
    start = time.perf_counter()
    generate_dataset(out, studies=studies, test_studies=0, seed=0, size=size, workers=workers)
    seconds = time.perf_counter() - start
    files = list(out.glob("train_images/*/*/*.dcm"))
    mb = sum(f.stat().st_size for f in files) / 1e6
    return dict(size=size, studies=studies, seconds=seconds, slices=len(files), mb=mb)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small-studies", type=int, default=20)
    p.add_argument("--full-studies", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run("small", args.small_studies, args.workers, Path(tmp)),
                run("full", args.full_studies, args.workers, Path(tmp))]
    print(f"\nphantom generation, {args.workers} workers")
    print(f"{'size':<6} {'studies':>7} {'seconds':>8} {'studies/s':>10} {'slices/s':>9} {'MB/s':>7} {'s/study':>8}")
    for r in rows:
        print(f"{r['size']:<6} {r['studies']:>7} {r['seconds']:>8.2f} {r['studies'] / r['seconds']:>10.2f} "
              f"{r['slices'] / r['seconds']:>9.1f} {r['mb'] / r['seconds']:>7.1f} {r['seconds'] / r['studies']:>8.2f}")
    small, full = rows
    print(f"full / small: {full['seconds'] / full['studies'] / (small['seconds'] / small['studies']):.1f}x time per "
          f"study, {(full['slices'] / full['seconds']) / (small['slices'] / small['seconds']):.2f}x slices/s")
    print(f"target: 20 small studies < 30 s -> {20 * small['seconds'] / small['studies']:.1f} s "
          f"({'met' if 20 * small['seconds'] / small['studies'] < 30 else 'MISSED'})")


if __name__ == "__main__":
    main()
