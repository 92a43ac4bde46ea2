"""Inference time: seconds per study of the demo ensemble on this machine, and an estimate for the full ensemble
on a Kaggle T4 for the hidden test set, from counted FLOPs, against the 9-hour limit.

Demo: ``rsna2024 predict`` (keypoint + split + global runs, as the runner's submission) on a phantom's test studies;
the runs are trained first (``rsna2024 run`` on a fresh phantom, 2 folds, one epoch: speed does not depend on
training) unless ``--runs`` names trained ones (then ``--data`` is their data folder).

Full ensemble: every ``experiments/keypoint_*.yaml``, ``split_*.yaml`` and ``global_*.yaml`` model is built at full
size (``pretrained: none``, no training) and one forward pass on its real input size is counted with
``torch.utils.flop_counter.FlopCounterMode``; times the forward passes a study needs (keypoints: 1 Sag T2, 2 Sag T1
and 5 axial samples; split models: a sample per level and side; global: one per level) times the folds. The T4's
time is those FLOPs over an assumed effective throughput (:data:`T4_PEAK_FP16_TFLOPS` x :data:`T4_UTILISATION`).

    python bench/infer.py                                   # demo (trains the demo runs first) + T4 estimate
    python bench/infer.py --runs runs/demo/keypoint_* runs/demo/split_* runs/demo/global --data data/phantom --threads 1
    python bench/infer.py --skip-demo                       # the T4 estimate only
    python bench/infer.py --skip-demo --measure cuda        # also time the full models' forward passes on this GPU
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
T4_PEAK_FP16_TFLOPS = 65.0  # NVIDIA T4 datasheet: fp16 tensor-core peak
T4_UTILISATION = 0.25  # assumed: batched 2D CNN / small-transformer inference under autocast reaches ~1/4 of peak
KAGGLE_LIMIT_H = 9.0  # the competition's notebook run-time limit
TEST_STUDIES = 700  # about the size of the hidden test set
# forward passes per study and fold model of the keypoint tasks (data.slice_search_mm 0: one slice per sample)
KEYPOINT_SAMPLES = {"sagt2": 1, "sagt1": 2, "axial": 5}
FULL_PATTERNS = ("keypoint_*.yaml", "split_*.yaml", "global_*.yaml")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", type=Path, default=None, help="trained run folders (default: train the demo)")
    p.add_argument("--data", type=Path, default=None, help="data folder of --runs (its test split is predicted)")
    p.add_argument("--studies", type=int, default=12, help="training studies of the generated phantom")
    p.add_argument("--test-studies", type=int, default=8, help="test studies of the generated phantom")
    p.add_argument("--device", default="cpu", help="device of the demo prediction (cpu, cuda, auto)")
    p.add_argument("--tta", action="store_true", help="demo prediction with flip TTA")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); on a busy shared machine 1 avoids oversubscription")
    p.add_argument("--skip-demo", action="store_true", help="only the full ensemble's estimate")
    p.add_argument("--measure", choices=["none", "cpu", "cuda"], default="none",
                   help="also time each full model's forward passes (batch --batch, autocast on cuda) and report the "
                        "achieved TFLOP/s")
    p.add_argument("--batch", type=int, default=16, help="batch of --measure")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- demo ensemble on this machine
def train_demo(work: Path, studies: int, test_studies: int) -> tuple[Path, list[Path]]:
    from rsna2024.cli import main
    from rsna2024.synthetic.generate import generate_dataset

    data = generate_dataset(work / "data", studies=studies, test_studies=test_studies, seed=0, size="small",
                            workers=1)
    code = main(["run", "--data", str(data), "--cache", str(work / "cache"), "--experiments",
                 str(ROOT / "experiments" / "demo"), "--runs", str(work / "runs"), "--set", "folds=2", "--set",
                 "epochs=1", "--device", "cpu", "--workers", "1"])
    if code != 0:
        sys.exit(f"training the demo runs failed (exit {code})")
    runs = sorted(p.parent for p in (work / "runs").glob("*/config.yaml")
                  if p.parent.name.startswith(("keypoint_", "split_", "global")))
    return data, runs


def demo_seconds(data: Path, runs: list[Path], device: str, tta: bool) -> str:
    from rsna2024.inference.predict import predict_submission

    result = predict_submission(data, runs, None, device=device, tta=tta)
    n = result.studies
    per = (result.seconds - result.load_seconds) / max(n, 1)
    return (f"demo ensemble ({len(runs)} runs: {', '.join(r.name for r in runs)}) on {device}"
            f"{' with flip TTA' if tta else ''}, {torch.get_num_threads()} threads: {n} test studies in "
            f"{result.seconds:.1f} s, of which {result.load_seconds:.1f} s loading the fold models; "
            f"{per:.2f} s per study (preprocessing, stage 1, stage 2, blend)")


# --------------------------------------------------------------------------- full ensemble, counted
def full_models():
    """(config path, task, model, example inputs, forward passes per study) of every full config."""
    from rsna2024.classifiers.dataset import region_count
    from rsna2024.constants import LEVELS
    from rsna2024.keypoints.tasks import KeypointTask
    from rsna2024.training.config import load_config
    from rsna2024.training.task import create_task

    for pattern in FULL_PATTERNS:
        for path in sorted((ROOT / "experiments").glob(pattern)):
            cfg = load_config(path, ["model.pretrained=none"])
            task = create_task(cfg)
            model = task.build_model(pretrained=False).eval()
            if isinstance(task, KeypointTask):
                size = cfg.data.image_size
                rows, cols = (size, size) if isinstance(size, int) else size
                inputs = (torch.zeros(1, cfg.data.slices, rows, cols),)
                passes = KEYPOINT_SAMPLES[task.kind]
            else:
                roi = cfg.data.roi
                regions = region_count(task.conditions, roi)
                inputs = (torch.zeros(1, regions, roi.slices, roi.out_size, roi.out_size),
                          torch.zeros(1, dtype=torch.long))
                passes = len(LEVELS) * (1 if task.is_global else len(task.conditions))
            yield path, cfg, task, model, inputs, passes


def count_flops(model, inputs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return int(counter.get_total_flops())


def measure_seconds(model, inputs, batch: int, device: str) -> float:
    """Seconds per forward pass of one sample at batch ``batch`` (autocast fp16 on CUDA), after a warm-up."""
    dev = torch.device(device)
    model = model.to(dev)
    batched = [x.repeat(batch, *[1] * (x.ndim - 1)).to(dev) for x in inputs]
    autocast = torch.autocast("cuda", dtype=torch.float16) if dev.type == "cuda" else torch.autocast("cpu",
                                                                                                     enabled=False)
    with torch.no_grad(), autocast:
        model(*batched)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        reps = 5 if dev.type == "cuda" else 1
        start = time.perf_counter()
        for _ in range(reps):
            model(*batched)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    model.to("cpu")
    return (time.perf_counter() - start) / reps / batch


def full_estimate(measure: str, batch: int) -> str:
    lines = ["| config | model | input (one pass) | passes/study x folds | GFLOP/pass | GFLOP/study | TTA |"
             + (f" measured {measure} ms/pass | achieved TFLOP/s |" if measure != "none" else ""),
             "|---|---|---|---|---:|---:|---|" + ("---:|---:|" if measure != "none" else "")]
    total = total_tta = 0.0
    for path, cfg, task, model, inputs, passes in full_models():
        flops = count_flops(model, inputs)
        per_study = flops * passes * cfg.folds
        mirrored = not getattr(task, "mirror_invariant", True) and not path.name.startswith("keypoint_")
        total += per_study
        total_tta += per_study * (2 if mirrored else 1)
        backbone = cfg.model.params.get("backbone") or cfg.model.params.get("encoder", "")
        row = (f"| {path.name} | {cfg.model.name} {backbone} | {'x'.join(map(str, inputs[0].shape[1:]))} | "
               f"{passes} x {cfg.folds} | {flops / 1e9:.1f} | {per_study / 1e9:.0f} | {'x2' if mirrored else '-'} |")
        if measure != "none":
            seconds = measure_seconds(model, inputs, batch, measure)
            row += f" {seconds * 1e3:.2f} | {flops / seconds / 1e12:.1f} |"
        lines.append(row)
        del model
    effective = T4_PEAK_FP16_TFLOPS * T4_UTILISATION
    out = ["\n".join(lines), ""]
    for name, flops in (("without TTA", total), ("with flip TTA", total_tta)):
        seconds = flops / (effective * 1e12)
        hours = seconds * TEST_STUDIES / 3600
        out.append(f"full ensemble {name}: {flops / 1e12:.2f} TFLOP per study; on a T4 at {T4_PEAK_FP16_TFLOPS:g} "
                   f"TFLOP/s fp16 peak x {T4_UTILISATION:g} assumed utilisation = {effective:.2f} TFLOP/s: "
                   f"{seconds:.2f} s per study, {hours:.2f} h for {TEST_STUDIES} studies "
                   f"({hours / KAGGLE_LIMIT_H:.0%} of the {KAGGLE_LIMIT_H:g}-hour limit)")
    return "\n".join(out)


def main(argv=None) -> int:
    from rsna2024.utils.logging import setup_logging

    args = parse_args(argv)
    setup_logging("WARNING")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_demo:
        if args.runs:
            if args.data is None:
                sys.exit("--runs needs --data (the runs' data folder; its test split is predicted)")
            print(demo_seconds(args.data, args.runs, args.device, args.tta))
        else:
            with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
                data, runs = train_demo(Path(tmp), args.studies, args.test_studies)
                print(demo_seconds(data, runs, args.device, args.tta))
    print(full_estimate(args.measure, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
