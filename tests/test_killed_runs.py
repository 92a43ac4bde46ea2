"""``python main.py --demo`` killed with SIGKILL at random moments and started again ends with the files of an
uninterrupted run, and no half-written file is ever left looking finished.

One tiny demo (4 phantom studies, 2 folds, 2 epochs; ``keypoint_sagt2`` -> coordinates -> ``split_spinal``: every
stage of the pipeline) runs once whole, timed; a second copy is killed at KILLS moments drawn (seeded) along that
run's time line and restarted after each. After every kill each file a reader takes as finished (phantom CSVs and
DICOMs once ``train.csv`` exists, cache entries with their record, CSVs, checkpoints of finished folds, metrics)
must equal the uninterrupted run's; at the end everything must, checkpoints tensor for tensor (exactly: CPU, one
thread, fixed seeds, and a resumed fold restores every RNG state), and no temporary file is left.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import dead_pid, stale_temporary

from rsna2024.utils.io import TEMP_PATTERN

ROOT = Path(__file__).resolve().parents[1]
SEED, KILLS = 2037, 3
ARGS = ["--demo-studies", "4", "--workers", "1", "--set", "folds=2", "--set", "epochs=2"]
EXPERIMENTS = ("keypoint_sagt2.yaml", "split_spinal.yaml")
# files that hold times, absolute paths or digests of such files: compared without those fields, or not at all
SKIPPED = {"main.log", "log.txt", "coords_oof.inputs.json", "coords_test.inputs.json", "params.json",
           ".phantom-incomplete"}
TIMING_KEYS = ("seconds", "images_per_s")
PLAN = "rsna2024.training.runner: plan: "  # the runner's log line once the data is ready


def _cmd(root: Path, experiments: Path) -> list[str]:
    return [sys.executable, "main.py", "--demo", "--data", str(root / "data"), "--cache", str(root / "cache"),
            "--runs", str(root / "runs"), "--experiments", str(experiments), *ARGS]


def _run(cmd: list[str], log: Path, kill_at: float | None = None, after_plan: bool = False
         ) -> tuple[int | None, float, float | None]:
    """``(exit status, seconds, seconds until its PLAN line)`` of ``cmd``; the status is None when it was SIGKILLed
    ``kill_at`` s after its start (after its PLAN line with ``after_plan``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        planned = None
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if planned is None and PLAN in log.read_text(errors="replace"):
                    planned = now - t0
                start = planned if after_plan else 0.0
                if kill_at is not None and start is not None and now - t0 >= start + kill_at:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return None, time.monotonic() - t0, planned
                if now - t0 > 600:
                    raise TimeoutError(f"{' '.join(cmd)} ran for 10 minutes")
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return proc.returncode, time.monotonic() - t0, planned


def _files(folder: Path) -> dict[Path, Path]:
    """Relative path -> path of every file under ``folder`` but logs and the atomic writers' temporaries."""
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder): p for p in folder.rglob("*") if p.is_file() and not TEMP_PATTERN.match(p.name)
            and p.name not in SKIPPED and "logs" not in p.relative_to(folder).parts}


def _temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.tmp") if TEMP_PATTERN.match(p.name))


def _cache_folder(root: Path) -> Path | None:
    folders = list((root / "cache").glob("v*")) if (root / "cache").is_dir() else []
    assert len(folders) <= 1, folders
    return folders[0] if folders else None


def _json(path: Path, drop=()) -> object:
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k not in drop} if isinstance(data, dict) else data


def _done(path: Path) -> dict:
    """A done marker without its times, its outputs by name."""
    info = _json(path, ["seconds"])
    return {**info, "outputs": [Path(p).name for p in info["outputs"]],
            "metrics": {k: v for k, v in info["metrics"].items() if k not in TIMING_KEYS}}


def _metrics(path: Path, strict: bool) -> dict[tuple, dict]:
    records = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            assert not strict, f"{path}: a cut line survived: {line!r}"
            continue
        records[(r["fold"], r["epoch"])] = {k: v for k, v in r.items() if k not in TIMING_KEYS}
    return records


def _same_checkpoint(a: Path, b: Path) -> None:
    ca, cb = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
    assert ca["epoch"] == cb["epoch"], b
    assert ca["model"].keys() == cb["model"].keys(), b
    for key, tensor in ca["model"].items():
        assert torch.equal(tensor, cb["model"][key]), f"{b}: {key} differs from the uninterrupted run"
    if "optimizer" in ca:  # a last checkpoint: the optimizer's moments too
        flat = lambda c: [t for s in c["optimizer"]["state"].values() for t in s.values()  # noqa: E731
                          if isinstance(t, torch.Tensor)]
        assert all(torch.equal(x, y) for x, y in zip(flat(ca), flat(cb), strict=True)), f"{b}: optimizer state"


def check_against(whole: Path, killed: Path, final: bool) -> int:
    """Every file of ``killed`` a reader takes as finished equals ``whole``'s; with ``final`` every file of
    ``whole`` must be there too. Returns the number of files compared."""
    compared = 0
    # the phantom: finished once train.csv exists (written last; before that it is written again from scratch)
    ref, got = _files(whole / "data"), _files(killed / "data")
    if final or (killed / "data" / "train.csv").exists():
        for rel in ref if final else got:
            assert rel in got and got[rel].read_bytes() == ref[rel].read_bytes(), f"data/{rel} differs or is missing"
            compared += 1
    # the cache: an entry counts once its record (.json) is written; index and slices tables once they exist
    cref, cgot = _cache_folder(whole), _cache_folder(killed)
    if cgot is not None:
        ref, got = _files(cref), _files(cgot)
        wanted = ref if final else got
        for rel in wanted:
            assert rel in got, f"cache/{rel} is missing"
            if rel.suffix == ".json":
                assert _json(got[rel], ["fingerprint"]) == _json(ref[rel], ["fingerprint"]), f"cache/{rel}"
                npy = rel.with_suffix(".npy")
                assert npy in got and got[npy].read_bytes() == ref[npy].read_bytes(), f"cache/{npy} (its record exists)"
            elif rel.suffix == ".csv":
                assert got[rel].read_text() == ref[rel].read_text(), f"cache/{rel}"
            compared += 1
    # the runs: CSVs (coordinates, OOF files, tables) are written once, finished; checkpoints are compared once their
    # fold is done (a best or last checkpoint of a fold in progress must still load)
    ref, got = _files(whole / "runs"), _files(killed / "runs")
    if final:
        assert set(got) == set(ref), f"files differ: {sorted(set(got) ^ set(ref))}"
    for rel, path in got.items():
        assert rel in ref, f"runs/{rel}: not made by the uninterrupted run"
        name, done = rel.name, rel.parent / f"{rel.name.split('_')[0]}_done.json"
        if name.endswith(".csv") or name in ("config.yaml", "report.md"):
            text = path.read_text().replace(str(killed), str(whole))  # report.md names the files it read
            assert text == ref[rel].read_text(), f"runs/{rel} differs from the uninterrupted run's"
        elif name.endswith(".pt"):
            if done in got:
                _same_checkpoint(ref[rel], path)
            else:
                torch.load(path, map_location="cpu", weights_only=False)["model"]
        elif name.endswith("_done.json"):
            assert _done(path) == _done(ref[rel]), f"runs/{rel}"
        elif name == "metrics.jsonl":
            mine, theirs = _metrics(path, strict=final), _metrics(ref[rel], strict=True)
            assert all(r == theirs.get(key) for key, r in mine.items()), f"runs/{rel}: an epoch's figures differ"
            assert not final or mine == theirs, f"runs/{rel}"
        compared += 1
    return compared


@pytest.fixture
def experiments(tmp_path) -> Path:
    folder = tmp_path / "experiments"
    folder.mkdir()
    for name in EXPERIMENTS:
        shutil.copy(ROOT / "experiments" / "demo" / name, folder / name)
    return folder


@pytest.mark.slow
def test_demo_killed_at_random_moments_ends_as_an_uninterrupted_run(tmp_path, experiments):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    rc, duration, plan_at = _run(_cmd(whole, experiments), tmp_path / "whole.log")
    assert rc == 0 and plan_at, (tmp_path / "whole.log").read_text()[-3000:]

    # kill moments along the uninterrupted run's time line. A moment in its data stage (phantom, validation, cache)
    # kills a run that long after its start; a later one, a restart that long after it reached the experiments (its
    # PLAN line: finished folds are skipped at once, so it is about where the previous kill left it)
    rng = random.Random(SEED)
    moments = sorted(rng.uniform(0.02, 0.98) * duration for _ in range(KILLS))
    report, leftovers = [], set()
    for i, moment in enumerate(moments):
        log = tmp_path / f"attempt{i}.log"
        after_plan = i > 0 and moment > plan_at
        delay = moment - max(moments[i - 1], plan_at) if after_plan else moment
        rc, seconds, _ = _run(_cmd(killed, experiments), log, kill_at=delay, after_plan=after_plan)
        lines = [x for x in log.read_text().splitlines() if " INFO " in x or " WARNING " in x]
        report.append(f"kill {i + 1} after {seconds:.1f} s" if rc is None else f"run {i + 1} ended ({rc})")
        report[-1] += f", last: {lines[-1].split(': ', 1)[-1][:70] if lines else '-'}"
        assert rc in (None, 0), log.read_text()[-3000:]
        check_against(whole, killed, final=False)
        leftovers |= set(_temporaries(killed))
    assert any(r.startswith("kill") for r in report), report

    # stale temporaries as a killed writer leaves them are removed on the next start; a live writer's are kept
    gone = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        planted = [stale_temporary(killed / "runs", "oof_scores.csv", gone),
                   stale_temporary(killed / "data", "folds.csv", gone),
                   stale_temporary(next((killed / "cache").glob("v*/series/*")), "1.npy", gone)]
        concurrent = stale_temporary(killed / "runs", "coords_oof.csv", live.pid)
        rc, _, _ = _run(_cmd(killed, experiments), tmp_path / "last.log")
        assert rc == 0, (tmp_path / "last.log").read_text()[-3000:]
        assert concurrent.exists(), "a live process's temporary was removed"
    finally:
        live.kill()
        live.wait()
    concurrent.unlink()
    assert not any(p.exists() for p in [*planted, *leftovers]), "a stale temporary survived the restart"
    assert _temporaries(killed) == [] and not (killed / "data" / ".phantom-incomplete").exists()
    compared = check_against(whole, killed, final=True)
    print(f"uninterrupted {duration:.1f} s (data ready at {plan_at:.1f} s), kill moments "
          f"{', '.join(f'{m:.1f}' for m in moments)} s; " + "; ".join(report) +
          f"; {len(leftovers)} temporaries left by kills; {compared} files equal")
