"""The study report of one phantom study, rendered to PNG by headless Chromium.

Writes a phantom (``--studies`` training + 1 test study at ``--size``, kept in ``--work`` for the next run) with a
2-fold ``folds.csv`` and its cache, trains fold 0 of the demo configs (``experiments/demo/``: the three keypoint
runs and the global classifier; ``--epochs`` overrides their epochs), writes ``rsna2024 report`` of a fold-0
training study (out of fold) to ``<work>/study_report.html`` and screenshots it with Chromium
(``chromium --headless --screenshot``) into ``--out`` (default ``notebooks/assets/study_report.png``), cropped
to the page and reduced to 256 colours to stay under 500 KB. Prints the seconds of each step and the sizes.

    python bench/report.py --work /tmp/bench_report

Chromium is the Debian package ``chromium`` (``apt-get install -y chromium``); without it the script says so
and exits 1 before doing any work.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("keypoint_sagt2", "keypoint_sagt1", "keypoint_axial", "global")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
MAX_PNG_BYTES = 500_000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="working folder (phantom, cache, runs, the HTML page)")
    p.add_argument("--out", type=Path, default=ROOT / "notebooks" / "assets" / "study_report.png")
    p.add_argument("--studies", type=int, default=10, help="training studies of the phantom")
    p.add_argument("--size", choices=["small", "full"], default="small")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--epochs", type=int, default=None, help="override the demo configs' epochs")
    p.add_argument("--width", type=int, default=1400, help="browser window width, px")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return p.parse_args(argv)


def find_browser() -> str | None:
    return next((path for name in BROWSERS for path in [shutil.which(name)] if path), None)


def prepare(args) -> tuple[Path, Path, Path]:
    """The phantom (with a 2-fold folds.csv), its cache folder and the folds file, made once."""
    from rsna2024.data.folds import make_folds
    from rsna2024.dicom.cache import preprocess
    from rsna2024.synthetic.generate import generate_dataset

    data = args.work / "data"
    if not (data / "folds.csv").is_file():
        generate_dataset(data, studies=args.studies, test_studies=1, seed=args.seed, size=args.size, workers=1,
                         overwrite=True)
        make_folds(data, n_folds=2, overwrite=True)
    cache = preprocess(data, cache_root=args.work / "cache", split="all").parent
    return data, cache, data / "folds.csv"


def train(args, data: Path) -> list[Path]:
    """Fold 0 of each demo config (a finished fold is skipped); the run folders."""
    from rsna2024.training.config import load_config
    from rsna2024.training.trainer import train_fold

    runs = []
    for name in CONFIGS:
        sets = ["folds=2"] if name.startswith("keypoint") else ["folds=2", "data.oof_points=true"]  # OOF on true points
        if args.epochs is not None:
            sets.append(f"epochs={args.epochs}")
        cfg = load_config(ROOT / "experiments" / "demo" / f"{name}.yaml", sets)
        result = train_fold(cfg, data, 0, out=args.work / "runs", cache=args.work / "cache")
        runs.append(result.run_dir)
    return runs


def screenshot(browser: str, html: Path, png: Path, width: int) -> None:
    """Chromium's screenshot of ``html`` (a tall window, then cropped to the page and reduced to 256 colours)."""
    from PIL import Image, ImageChops

    raw = png.with_name(png.stem + ".raw.png")
    cmd = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},6000",
           f"--screenshot={raw}", html.resolve().as_uri()]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    image = Image.open(raw).convert("RGB")
    raw.unlink()
    box = ImageChops.difference(image, Image.new("RGB", image.size, (255, 255, 255))).getbbox()
    image = image.crop((0, 0, image.width, min(image.height, box[3] + 16))) if box else image
    for scale in (1.0, 0.85, 0.7, 0.6):
        shown = image if scale == 1.0 else image.resize((int(image.width * scale), int(image.height * scale)),
                                                       Image.LANCZOS)
        shown.quantize(colors=256).save(png, format="PNG", optimize=True)
        if png.stat().st_size <= MAX_PNG_BYTES:
            return


def main(argv=None) -> int:
    args = parse_args(argv)
    browser = find_browser()
    if browser is None:
        print("headless Chromium is needed to render the page and none was found (tried "
              f"{', '.join(BROWSERS)}); install it, e.g. on Debian/Ubuntu: apt-get install -y chromium",
              file=sys.stderr)
        return 1
    import pandas as pd
    import torch

    from rsna2024.inference.study_report import build_study_report, render_html

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    times = {}
    t = time.perf_counter()
    data, cache, folds = prepare(args)
    times["phantom + cache"] = time.perf_counter() - t
    t = time.perf_counter()
    runs = train(args, data)
    times["train fold 0 of 4 demo configs"] = time.perf_counter() - t
    fold0 = pd.read_csv(folds)
    study = int(fold0.loc[fold0["fold"] == 0, "study_id"].sort_values().iloc[0])
    t = time.perf_counter()
    report = build_study_report(data, study, runs, cache, folds_path=folds, device="cpu")
    html = args.work / "study_report.html"
    html.write_text(render_html(report))
    times["report (predict + draw + HTML)"] = time.perf_counter() - t
    t = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    screenshot(browser, html, args.out, args.width)
    times["Chromium screenshot"] = time.perf_counter() - t

    print(f"study {study} ({report.split}), {args.size} phantom of {args.studies} training studies, runs: "
          + "; ".join(report.runs))
    for step, seconds in times.items():
        print(f"{step:34s} {seconds:7.1f} s")
    shown = args.out.resolve().relative_to(ROOT) if args.out.resolve().is_relative_to(ROOT) else args.out
    print(f"page {html.stat().st_size / 1e3:.0f} KB, {len(report.panels)} images, {len(report.warnings)} warnings; "
          f"PNG {shown} {args.out.stat().st_size / 1e3:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
