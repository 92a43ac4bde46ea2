"""GPU throughput and memory of experiment configs: one training epoch each, as a Markdown table.

For every experiment YAML given, builds fold ``--fold``'s datasets and model exactly as ``rsna2024 train``
does (the full config, its batch size and mixed precision), trains one epoch (or ``--limit-steps``
optimizer steps) on ``--device`` and records images/s (the whole epoch: data loading, forward, backward,
optimizer) and the peak GPU memory (``torch.cuda.max_memory_allocated``). Nothing is written to a run
folder. Without CUDA it says so and exits 0; ``--device cpu --limit-steps 2`` is a smoke run.

    python bench/gpu.py experiments/keypoint_*.yaml --data data/phantom_full --out bench/gpu.md
    python bench/gpu.py experiments/demo/*.yaml --data data/phantom --device cpu --limit-steps 2
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path

import torch

GPU_BUDGET_GB = 16.0  # every full config must fit a 16 GB GPU


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", type=Path, help="experiment YAML files")
    p.add_argument("--data", type=Path, required=True, help="data folder with folds.csv (and its cache)")
    p.add_argument("--cache", type=Path, default=None, help="preprocessing cache root (default: <data>/../cache)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--limit-steps", type=int, default=None, help="optimizer steps per config (default: one epoch)")
    p.add_argument("--epochs", type=int, default=1,
                   help="epochs per config; images/s is the last one's (2: the first warms cuDNN and the loaders)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override every config, e.g. --set workers=8")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown table to this file")
    return p.parse_args(argv)


def measure(config: Path, args) -> dict:
    """One epoch (or ``--limit-steps``) of one experiment; returns a table row."""
    from rsna2024.training.config import load_config
    from rsna2024.training.trainer import FoldTrainer

    cfg = load_config(config, [*args.overrides, f"device={args.device}"])
    row = {"experiment": cfg.name, "model": cfg.model.name, "batch": cfg.batch_size * cfg.grad_accum,
           "amp": cfg.amp, "device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = FoldTrainer(cfg, args.data, args.fold, out=tmp, cache=args.cache)
        trainer.setup()
        row["amp"] = str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "none"
        if args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            for epoch in range(args.epochs):
                stats = trainer.train_epoch(epoch, limit_steps=args.limit_steps)
        except torch.cuda.OutOfMemoryError:
            row["error"] = "out of memory"
            stats = None
        if stats is not None:
            row.update(images=stats["images"], seconds=stats["seconds"], images_per_s=stats["images_per_s"])
        if args.device == "cuda":
            row["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        del trainer
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict], title: str) -> str:
    head = "| experiment | model | batch | amp | images | seconds | images/s | peak GPU GB | fits 16 GB |"
    lines = [title, "", head, "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        peak = r.get("peak_gb")
        fits = "-" if peak is None else ("yes" if peak <= GPU_BUDGET_GB and "error" not in r else "NO")
        if "error" in r:
            lines.append(f"| {r['experiment']} | {r['model']} | {r['batch']} | {r['amp']} | {r['error']} | | | "
                         f"{'' if peak is None else f'{peak:.2f}'} | {fits} |")
            continue
        lines.append(f"| {r['experiment']} | {r['model']} | {r['batch']} | {r['amp']} | {r['images']} | "
                     f"{r['seconds']:.1f} | {r['images_per_s']:.1f} | {'-' if peak is None else f'{peak:.2f}'} "
                     f"| {fits} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device on this machine: nothing measured "
              "(use --device cpu --limit-steps N for a smoke run of the configs)")
        return 0
    from rsna2024.utils.logging import setup_logging

    setup_logging("WARNING")
    if args.device == "cuda":
        title = f"One training epoch per config on {torch.cuda.get_device_name()} (torch {torch.__version__})"
    else:
        title = f"CPU smoke run ({torch.get_num_threads()} threads, torch {torch.__version__})"
    if args.limit_steps:
        title += f", {args.limit_steps} optimizer steps per config"
    if args.epochs > 1:
        title += f"; images/s of the last of {args.epochs} epochs, peak memory over all"
    rows = []
    for config in args.configs:
        rows.append(measure(config, args))
        if args.out is not None:  # after every config, so a run cut short keeps the rows measured
            from rsna2024.utils.io import atomic_write_text

            atomic_write_text(args.out, markdown(rows, title))
    print(markdown(rows, title))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
