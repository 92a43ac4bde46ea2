"""The runner's plan (discovery, dependency order, errors) and its job scheduler, on plain configs and fake commands."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from rsna2024.errors import ConfigError
from rsna2024.training.runner import (
    COORDS_STEP,
    Blocked,
    Experiment,
    Job,
    PlanError,
    discover_experiments,
    parse_ids,
    plan_experiments,
    run_jobs,
    select_experiments,
)


def exp(name, task, depends_on=(), **data):
    raw = {"name": name, "task": task, "depends_on": list(depends_on)}
    if data:
        raw["data"] = data
    return Experiment.from_dict(raw)


POOL = [
    exp("split_spinal_a", "split_spinal"),
    exp("global_a", "global"),
    exp("keypoint_axial", "keypoint_axial", depends_on=["keypoint_sagt2"]),
    exp("keypoint_sagt2", "keypoint_sagt2"),
    exp("keypoint_sagt1", "keypoint_sagt1"),
    exp("split_foraminal_a", "split_foraminal"),
]


def names(plan):
    return [e.name for e in plan.experiments]


def test_keypoints_then_coordinates_then_classifiers_with_depends_on_honoured():
    plan = plan_experiments(POOL)
    order = names(plan)
    assert order == ["keypoint_sagt2", "keypoint_axial", "keypoint_sagt1", "split_spinal_a", "global_a",
                     "split_foraminal_a"]
    assert sorted(plan.coords_from) == ["keypoint_axial", "keypoint_sagt1", "keypoint_sagt2"]
    steps = plan.steps
    assert steps.index(COORDS_STEP) == 3 and steps[4:] == order[3:]
    assert set(plan.dependencies("global_a")) == {COORDS_STEP}
    assert plan.dependencies("keypoint_axial") == ["keypoint_sagt2"]
    assert set(plan.dependencies(COORDS_STEP)) == set(plan.coords_from)


def test_a_classifier_can_depend_on_another_experiment_and_waits_for_it():
    pool = [exp("global_a", "global", depends_on=["split_spinal_a"]), *POOL[:1], *POOL[2:5]]
    order = names(plan_experiments(pool))
    assert order.index("split_spinal_a") < order.index("global_a")
    assert all(order.index(k) < order.index("split_spinal_a") for k in order if k.startswith("keypoint"))


def test_selection_pulls_in_dependencies_and_keypoints_only_when_coordinates_are_missing():
    chosen = select_experiments(POOL, ["keypoint_axial"])
    assert names(plan_experiments(POOL, chosen)) == ["keypoint_sagt2", "keypoint_axial"]
    chosen = select_experiments(POOL, ["global_a"])
    assert names(plan_experiments(POOL, chosen))[-1] == "global_a"
    assert len(plan_experiments(POOL, chosen).experiments) == 4  # three keypoint models + global_a
    plan = plan_experiments(POOL, chosen, coords_exist=True)
    assert names(plan) == ["global_a"] and plan.coords_from == [] and plan.steps == ["global_a"]
    # on the true points no coordinates are needed at all
    true_points = exp("global_true", "global", oof_points="true")
    assert names(plan_experiments([true_points])) == ["global_true"]


def test_missing_dependency_is_named():
    pool = [exp("split_spinal_a", "split_spinal", depends_on=["keypoint_sagt9"]), *POOL[2:5]]
    with pytest.raises(PlanError, match=r"'split_spinal_a'.*depends on 'keypoint_sagt9'"):
        plan_experiments(pool)
    with pytest.raises(PlanError, match=r"no experiment named 'nope'.*known: .*global_a"):
        select_experiments(POOL, ["nope"])


def test_cycle_is_named():
    pool = [exp("a", "other_task", depends_on=["b"]), exp("b", "other_task", depends_on=["c"]),
            exp("c", "other_task", depends_on=["a"]), exp("d", "other_task")]
    with pytest.raises(PlanError, match=r"cycle among experiments: a -> b -> c -> a"):
        plan_experiments(pool)


def test_classifier_without_any_keypoint_source_is_refused():
    with pytest.raises(PlanError, match=r"'split_spinal_a' reads the keypoint coordinates.*no keypoint experiment"):
        plan_experiments([POOL[0]])
    assert names(plan_experiments([POOL[0]], coords_exist=True)) == ["split_spinal_a"]


def test_two_keypoint_runs_of_one_task_are_refused():
    pool = [*POOL, exp("keypoint_sagt2_big", "keypoint_sagt2")]
    with pytest.raises(PlanError, match=r"keypoint_sagt2, keypoint_sagt2_big are all task 'keypoint_sagt2'"):
        plan_experiments(pool)


def test_discovery_reads_yaml_files_of_one_folder(tmp_path):
    (tmp_path / "b.yaml").write_text("task: split_spinal\ndepends_on: [a]\n")
    (tmp_path / "a.yml").write_text("task: keypoint_sagt2\n")
    (tmp_path / "notes.txt").write_text("not a config")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("task: global\n")
    found = discover_experiments(tmp_path, overrides=["epochs=3"])
    assert [(e.name, e.task, e.depends_on, e.config.epochs) for e in found] == [
        ("a", "keypoint_sagt2", [], 3), ("b", "split_spinal", ["a"], 3)]
    assert found[1].needs_coords and not found[0].needs_coords
    (tmp_path / "c.yaml").write_text("name: a\ntask: global\n")
    with pytest.raises(PlanError, match=r"two experiments are named 'a'"):
        discover_experiments(tmp_path)
    (tmp_path / "c.yaml").write_text("name: c\n")
    with pytest.raises(ConfigError, match=r"c.yaml: missing required key task"):
        discover_experiments(tmp_path)


def test_parse_ids():
    assert parse_ids("0,2", "--folds") == [0, 2] and parse_ids(None, "--folds") is None
    with pytest.raises(PlanError, match="--gpus: expected comma-separated integers"):
        parse_ids("0;1", "--gpus")


# --------------------------------------------------------------------------- scheduler
def _fake(tmp_path: Path, name: str, seconds: float = 0.3, fail: bool = False) -> list[str]:
    """A command that records when it ran and with which CUDA_VISIBLE_DEVICES, sleeps, and exits."""
    code = (
        "import json, os, sys, time\n"
        f"t0 = time.time(); time.sleep({seconds})\n"
        f"open({str(tmp_path / (name + '.json'))!r}, 'w').write(json.dumps("
        "{'start': t0, 'end': time.time(), 'gpu': os.environ.get('CUDA_VISIBLE_DEVICES')}))\n"
        f"sys.exit({1 if fail else 0})\n")
    return [sys.executable, "-c", code]


def _record(tmp_path, name):
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_one_job_per_gpu_at_once_in_dependency_order(tmp_path):
    # kp folds 0-3 -> coords -> cls folds 0-3; an independent job "other" may run any time
    jobs = [Job(f"kp{k}", command=_fake(tmp_path, f"kp{k}", 1.0)) for k in range(4)]
    jobs.append(Job("coords", deps=[f"kp{k}" for k in range(4)], command=_fake(tmp_path, "coords", 0.1)))
    jobs += [Job(f"cls{k}", deps=["coords"], command=_fake(tmp_path, f"cls{k}"), log_file=tmp_path / f"cls{k}.log")
             for k in range(4)]
    jobs.append(Job("other", command=_fake(tmp_path, "other")))
    results = run_jobs(jobs, slots=["0", "1"], poll_s=0.02)
    assert all(r.status == "done" for r in results.values()), results
    runs = {j.name: _record(tmp_path, j.name) for j in jobs}
    assert {r["gpu"] for r in runs.values()} == {"0", "1"}
    for gpu in ("0", "1"):  # never two jobs at once on one GPU
        spans = sorted((r["start"], r["end"]) for r in runs.values() if r["gpu"] == gpu)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert max(runs[f"kp{k}"]["end"] for k in range(4)) <= runs["coords"]["start"]
    assert all(runs["coords"]["end"] <= runs[f"cls{k}"]["start"] for k in range(4))
    # two GPUs: keypoint folds ran at the same time, one on each
    kp = [runs[f"kp{k}"] for k in range(4)]
    assert any(a["gpu"] != b["gpu"] and a["start"] < b["end"] and b["start"] < a["end"] for a in kp for b in kp)


def test_a_failed_job_blocks_its_dependants_only(tmp_path):
    jobs = [Job("kp0", command=_fake(tmp_path, "kp0", 0.05, fail=True), log_file=tmp_path / "kp0.log"),
            Job("kp1", command=_fake(tmp_path, "kp1", 0.05)),
            Job("coords", deps=["kp0", "kp1"], command=_fake(tmp_path, "coords", 0.05)),
            Job("cls0", deps=["coords"], command=_fake(tmp_path, "cls0", 0.05)),
            Job("other", command=_fake(tmp_path, "other", 0.05))]
    results = run_jobs(jobs, slots=["3"], poll_s=0.02)
    assert {n: r.status for n, r in results.items()} == {"kp0": "failed", "kp1": "done", "coords": "blocked",
                                                         "cls0": "blocked", "other": "done"}
    assert "kp0 failed" in results["cls0"].message or "coords blocked" in results["cls0"].message
    assert not (tmp_path / "coords.json").exists() and _record(tmp_path, "other")["gpu"] == "3"


def test_serial_jobs_run_in_process_and_checks_skip_or_block():
    ran = []

    def call(name):
        return lambda: ran.append(name)

    def broken():
        raise ValueError("bad input")

    def blocked():
        raise Blocked("folds 3, 4 of kp are not finished")

    jobs = [Job("a", call=call("a")), Job("b", call=call("b"), check=lambda: "finished earlier"),
            Job("c", deps=["a", "b"], call=call("c")), Job("d", call=broken), Job("e", deps=["d"], call=call("e")),
            Job("f", check=blocked, call=call("f")), Job("g", deps=["f"], call=call("g"))]
    results = run_jobs(jobs)
    assert ran == ["a", "c"]
    assert {n: r.status for n, r in results.items()} == {"a": "done", "b": "skipped", "c": "done", "d": "failed",
                                                         "e": "blocked", "f": "blocked", "g": "blocked"}
    assert "ValueError: bad input" in results["d"].message and "folds 3, 4" in results["f"].message


def test_before_runs_ahead_of_its_job_only_and_a_failing_one_fails_it(tmp_path):
    ran = []

    def broken():
        raise OSError("disk full")

    jobs = [Job("a", call=lambda: ran.append("a"), before=lambda: ran.append("before a")),
            Job("b", check=lambda: "finished earlier", before=lambda: ran.append("before b")),
            Job("c", call=lambda: ran.append("c"), before=broken), Job("d", deps=["c"], call=lambda: ran.append("d"))]
    results = run_jobs(jobs)
    assert ran == ["before a", "a"]
    assert {n: r.status for n, r in results.items()} == {"a": "done", "b": "skipped", "c": "failed", "d": "blocked"}
    assert "OSError: disk full" in results["c"].message
    # on a GPU slot it runs in this process before the command starts
    mark = tmp_path / "before"
    code = f"import pathlib, sys; sys.exit(0 if pathlib.Path({str(mark)!r}).exists() else 3)"
    results = run_jobs([Job("g", command=[sys.executable, "-c", code], before=mark.touch)], slots=["0"], poll_s=0.02)
    assert results["g"].status == "done"


def test_coordinates_cut_off_by_a_kill_are_predicted_again(tmp_path, caplog):
    """Until its inputs are recorded, a coordinates file counts as unfinished: a kill between writing the file and
    recording them makes the next run predict it again rather than keep it as a file of unknown origin."""
    from types import SimpleNamespace

    from rsna2024.training.runner import PENDING, FoldJobs, RunOptions

    runs = tmp_path / "runs"
    plan = plan_experiments([exp("kp", "keypoint_sagt2"), exp("cls", "split_spinal")])
    builder = FoldJobs(plan, {"kp": SimpleNamespace(folds=2), "cls": SimpleNamespace(folds=2)},
                       RunOptions(data=tmp_path / "data", runs=runs), [0, 1], 2)
    job = next(j for j in builder.jobs() if j.name == builder.coords_job("train"))
    with pytest.raises(Blocked, match="not finished: kp fold"):
        job.check()
    for k in (0, 1):
        (runs / "kp").mkdir(parents=True, exist_ok=True)
        (runs / "kp" / f"fold{k}_done.json").write_text(json.dumps({"fold": k}))
    out, sidecar = runs / "coords_oof.csv", runs / "coords_oof.inputs.json"
    assert job.check() is None  # absent: predicted
    job.before()
    assert json.loads(sidecar.read_text()) == PENDING
    out.write_text("study_id,x\n1,2.0\n")  # the file is written; the kill comes before its inputs are recorded
    assert job.check() is None and "was interrupted; predicting it again" in caplog.text
    job.after()
    assert json.loads(sidecar.read_text()) == builder.coords_inputs() and "up to date" in job.check()
    sidecar.unlink()  # a file the runner did not make is kept as it is
    assert "not made by the runner" in job.check()


# --------------------------------------------------------------------------- the runner on the toy task
TESTS = Path(__file__).resolve().parent
TOY = {"task": "toy_task:ToyPointTask", "epochs": 2, "batch_size": 2, "folds": 2, "workers": 0, "device": "cpu",
       "seed": 3, "model": {"name": "keypoint_tiny"}, "optim": {"lr": 3.0e-3}, "data": {"image_size": 32}}


@pytest.fixture
def toy_setup(tmp_path, phantom_dir):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield _toy_setup(tmp_path, phantom_dir)
    torch.set_num_threads(threads)


def _toy_setup(tmp_path, phantom_dir):
    """Two toy experiments (b depends on a) and a data folder with the phantom's labels in 2 folds."""
    import shutil

    import pandas as pd
    import yaml

    from rsna2024.training.runner import RunOptions

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(phantom_dir / "train.csv", data / "train.csv")
    ids = sorted(pd.read_csv(data / "train.csv")["study_id"])
    pd.DataFrame({"study_id": ids, "fold": [i % 2 for i in range(len(ids))]}).to_csv(data / "folds.csv", index=False)
    exps = tmp_path / "experiments"
    exps.mkdir()
    (exps / "toy_b.yaml").write_text(yaml.safe_dump({**TOY, "depends_on": ["toy_a"]}))
    (exps / "toy_a.yaml").write_text(yaml.safe_dump(TOY))
    return RunOptions(data=data, experiments_dir=exps, runs=tmp_path / "runs")


def test_runner_trains_every_fold_in_order_then_skips_them(toy_setup, capsys, caplog):
    import pandas as pd
    import yaml

    from rsna2024.training.runner import run_experiments

    opts = toy_setup
    assert run_experiments(opts) == 0
    out = capsys.readouterr().out
    a_done, b_done = (opts.runs / "toy_a" / "fold1_done.json"), (opts.runs / "toy_b" / "fold0_done.json")
    assert a_done.stat().st_mtime_ns < b_done.stat().st_mtime_ns  # b waited for every fold of a
    assert all((opts.runs / e / f"fold{k}_done.json").is_file() for e in ("toy_a", "toy_b") for k in (0, 1))
    assert re.search(r"toy_a\s+2 done", out) and re.search(r"toy_b\s+2 done", out)
    table = pd.read_csv(opts.runs / "oof_scores.csv")
    assert list(table["experiment"]) == ["image-free prior"] and table["vs_prior"].iloc[0] == 1.0
    assert "image-free prior" in out and "OOF scores, folds 0,1 (8 studies)" in out

    stamps = {p: p.stat().st_mtime_ns for p in opts.runs.rglob("*") if p.is_file() and p.name != "main.log"}
    caplog.clear()
    assert run_experiments(opts) == 0  # everything finished: nothing trained, nothing rewritten (table included)
    assert re.search(r"toy_a\s+2 skipped", capsys.readouterr().out)
    assert "toy_b fold 1: skipped (finished earlier)" in caplog.text and "running" not in caplog.text
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    opts.folds = [1]
    assert run_experiments(opts) == 0
    out = capsys.readouterr().out
    assert re.search(r"toy_b\s+1 skipped", out) and "OOF scores, folds 1 (4 studies)" in out

    # a changed config never passes for finished: its folds fail, what depends on them is not run
    caplog.clear()
    opts.folds = None
    (opts.experiments_dir / "toy_a.yaml").write_text(yaml.safe_dump({**TOY, "optim": {"lr": 1.0e-3}}))
    assert run_experiments(opts) == 1
    assert re.search(r"toy_a fold 0: not started, ConfigError: .*toy_a/config.yaml was written by a different "
                     r"config \(optim.lr: 0.003 != 0.001\)", caplog.text)
    assert "toy_b fold 0: not run, toy_a fold 0 failed" in caplog.text
    runs = {p: t for p, t in stamps.items() if p.parent != opts.runs}  # the run folders are untouched
    assert {p: p.stat().st_mtime_ns for p in runs} == runs


def test_runner_options_are_checked(toy_setup):
    from rsna2024.training.runner import run_experiments

    opts = toy_setup
    opts.folds = [2]
    with pytest.raises(PlanError, match=r"--folds: fold 2 does not exist .*folds 0..1"):
        run_experiments(opts)
    opts.folds, opts.experiments = None, ["toy_c"]
    with pytest.raises(PlanError, match=r"no experiment named 'toy_c'"):
        run_experiments(opts)
    opts.experiments, opts.gpus = None, [0]
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(PlanError, match=r"--gpus needs CUDA devices"):
            run_experiments(opts)


def test_gpu_jobs_are_real_train_commands(toy_setup):
    """The subprocess path with the runner's own ``rsna2024 train`` commands, two folds at once (on CPU here)."""
    import os

    import pandas as pd

    from rsna2024.data.folds import load_folds
    from rsna2024.training.runner import FoldJobs, load_plan

    opts = toy_setup
    opts.device = "cpu"
    plan, configs = load_plan(opts)
    jobs = FoldJobs(plan, configs, opts, [0, 1], 2).jobs()
    assert [j.name for j in jobs] == ["toy_a fold 0", "toy_a fold 1", "toy_b fold 0", "toy_b fold 1"]
    assert jobs[2].deps == ["toy_a fold 0", "toy_a fold 1"]
    assert jobs[2].command[3:] == ["train", "--config", str(opts.experiments_dir / "toy_b.yaml"), "--data",
                                   str(opts.data), "--fold", "0", "--out", str(opts.runs), "--set", "device=cpu"]
    opts.experiments = ["toy_a"]
    plan, configs = load_plan(opts)
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    results = run_jobs(FoldJobs(plan, configs, opts, [0, 1], 2).jobs(), slots=["0", "1"], env=env, poll_s=0.05)
    assert all(r.status == "done" for r in results.values()), [(r.name, r.message) for r in results.values()]
    assert {results[f"toy_a fold {k}"].slot for k in (0, 1)} == {"0", "1"}
    assert "toy_a fold 1 done" in (opts.runs / "logs" / "toy_a_fold1.log").read_text()
    assert len(pd.read_csv(opts.runs / "toy_a" / "oof_fold1.csv")) == (load_folds(opts.data / "folds.csv")["fold"]
                                                                        == 1).sum()
    again = run_jobs(FoldJobs(plan, configs, opts, [0, 1], 2).jobs(), slots=["0", "1"], env=env)
    assert {r.status for r in again.values()} == {"skipped"}


def test_folds_wanted_is_the_configs_common_number():
    from types import SimpleNamespace

    from rsna2024.training.runner import folds_wanted

    assert folds_wanted({}) == 5
    assert folds_wanted({"a": SimpleNamespace(folds=2), "b": SimpleNamespace(folds=2)}) == 2
    with pytest.raises(PlanError, match=r"different numbers of folds: a 2, b 5 \(use --set folds=K"):
        folds_wanted({"a": SimpleNamespace(folds=2), "b": SimpleNamespace(folds=5)})


def test_the_coordinates_file_is_the_one_classifiers_read_by_default():
    from rsna2024.classifiers.tasks import DEFAULT_OOF_POINTS
    from rsna2024.training.runner import COORDS_SPEC

    assert COORDS_SPEC == DEFAULT_OOF_POINTS
