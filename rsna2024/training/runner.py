"""The experiment runner: every config of an experiments folder, across the folds, in dependency order.

``python main.py`` and ``rsna2024 run`` call :func:`run_pipeline`: validate the data, write ``folds.csv``, fill
the preprocessing cache, then train. The plan (:func:`plan_experiments`) orders the experiments:

1. keypoint experiments (task ``keypoint_*``);
2. the coordinates step: the keypoint runs predict ``<runs>/coords_oof.csv`` (out of fold, the file stage 2's
   ``data.oof_points`` reads by default) and ``<runs>/coords_test.csv`` (mean of the fold models);
3. the classifiers (tasks ``split_*`` and ``global``) that read those coordinates;

with every ``depends_on`` of a config honoured on top (a missing dependency or a cycle is an error naming it).
Each experiment runs over the folds of ``folds.csv`` (or those picked). A finished fold (``fold{k}_done.json``)
is skipped and an interrupted one resumes (both by the fold trainer); a coordinates file is predicted again only
when absent, when its prediction was interrupted or when a keypoint fold it came from changed
(``coords_oof.inputs.json`` records their ``done`` markers). Temporaries a killed run left are removed at the
start. On one device the jobs run one after another in this process; with ``gpus`` each job is a subprocess
(``rsna2024 train`` / ``rsna2024 coords``) pinned to one GPU by ``CUDA_VISIBLE_DEVICES``, one job per GPU at a
time (:func:`run_jobs`). The end is the OOF table of :mod:`rsna2024.training.report`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rsna2024.errors import ConfigError
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)

COORDS_FILES = {"train": "coords_oof.csv", "test": "coords_test.csv"}
SUBMISSION_FILE = "submission.csv"  # <runs>/submission.csv: predict on the data folder's test split, after training
SUBMISSION_INPUTS = "submission.inputs.json"
COORDS_STEP = "coordinates"
PENDING = {"pending": True}  # a coordinates file's provenance while it is being predicted
# The classifiers' default ``data.oof_points`` (rsna2024.classifiers.tasks, not imported here: this module stays
# light for the CLI): the runner's out-of-fold coordinates file.
COORDS_SPEC = "{runs}/" + COORDS_FILES["train"]
CLASSIFIER_FAMILIES = {"split_spinal": "split", "split_foraminal": "split", "split_subarticular": "split",
                       "global": "global"}
KIND_ORDER = {"keypoint": 0, "other": 1, "classifier": 2, "baseline": 2}
BASELINE_PREFIXES = ("s0_", "s1_", "s2_", "s3_")  # seed baselines read stage-1 points like the classifiers


class PlanError(ConfigError):
    """The experiments cannot be run as asked: a missing dependency, a cycle, a duplicate name, a bad option."""


# --------------------------------------------------------------------------- experiments
def task_kind(task: str) -> str:
    """``keypoint`` (tasks ``keypoint_*``), ``classifier`` (``split_*``, ``global``), ``baseline`` (``s0_`` ..
    ``s3_``) or ``other``."""
    if task.startswith("keypoint_"):
        return "keypoint"
    if task.startswith(BASELINE_PREFIXES):
        return "baseline"
    return "classifier" if task in CLASSIFIER_FAMILIES else "other"


@dataclass
class Experiment:
    """One experiment config as the planner sees it: the YAML mapping (overrides applied) and its file."""

    name: str
    task: str
    path: Path | None = None
    depends_on: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    config: Any = None  # the typed ExperimentConfig when read from a file

    @property
    def kind(self) -> str:
        return task_kind(self.task)

    @property
    def family(self) -> str | None:
        """``split`` or ``global`` for a classifier, else None."""
        return CLASSIFIER_FAMILIES.get(self.task)

    @property
    def needs_coords(self) -> bool:
        """True for a classifier or seed baseline whose points (``data.oof_points``, default the runner's OOF
        coordinates, or ``train_points``/``valid_points``) name ``{runs}/coords_oof.csv``."""
        if self.kind not in ("classifier", "baseline"):
            return False
        data = self.raw.get("data") or {}
        specs = [data.get("oof_points", COORDS_SPEC), data.get("train_points"), data.get("valid_points")]
        return COORDS_SPEC in specs

    @classmethod
    def from_dict(cls, raw: dict) -> Experiment:
        """From a plain config mapping (``name``, ``task``, optional ``depends_on`` and ``data``), untyped."""
        return cls(name=raw["name"], task=raw["task"], depends_on=list(raw.get("depends_on") or []), raw=raw)


def read_experiment(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """An :class:`Experiment` from a YAML file through the typed config (``load_config``: unknown keys rejected,
    ``key=value`` overrides applied as ``rsna2024 train --set``); the typed config is kept in ``config``."""
    from rsna2024.training.config import config_to_dict, load_config

    cfg = load_config(path, overrides)
    return Experiment(name=cfg.name, task=cfg.task, path=Path(path), depends_on=list(cfg.depends_on),
                      raw=config_to_dict(cfg), config=cfg)


def discover_experiments(folder: str | Path, overrides: Sequence[str] = ()) -> list[Experiment]:
    """Every ``*.yaml`` / ``*.yml`` directly in ``folder`` (not its subfolders), sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PlanError(f"experiments folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return check_unique_names([read_experiment(p, overrides) for p in files])


def check_unique_names(experiments: Sequence[Experiment]) -> list[Experiment]:
    seen: dict[str, Experiment] = {}
    for e in experiments:
        if e.name in seen:
            raise PlanError(f"two experiments are named {e.name!r}: {seen[e.name].path} and {e.path}")
        seen[e.name] = e
    return list(experiments)


def select_experiments(pool: Sequence[Experiment], names: Sequence[str] | None, overrides: Sequence[str] = ()
                       ) -> list[Experiment]:
    """The experiments of ``pool`` named in ``names`` (names, or paths of YAML files, which join the pool);
    all of the pool when ``names`` is empty. Dependencies are added by :func:`plan_experiments`."""
    if not names:
        return list(pool)
    by_name = {e.name: e for e in pool}
    chosen: list[Experiment] = []
    for item in names:
        if item in by_name:
            exp = by_name[item]
        elif item.endswith((".yaml", ".yml")) or Path(item).is_file():
            exp = read_experiment(item, overrides)
        else:
            known = ", ".join(sorted(by_name)) or "none"
            raise PlanError(f"--experiments: no experiment named {item!r}; known: {known} (or give a YAML file's path)")
        if exp.name not in {e.name for e in chosen}:
            chosen.append(exp)
    return chosen


# --------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """Experiments in the order they run, and whether (and after which keypoint runs) coordinates are made."""

    experiments: list[Experiment]
    coords_from: list[str] = field(default_factory=list)  # keypoint experiments feeding the coordinates step

    @property
    def steps(self) -> list[str]:
        """Experiment names in order, with :data:`COORDS_STEP` after the last keypoint experiment it reads."""
        names = [e.name for e in self.experiments]
        if not self.coords_from:
            return names
        at = max(names.index(n) for n in self.coords_from) + 1
        return [*names[:at], COORDS_STEP, *names[at:]]

    def dependencies(self, name: str) -> list[str]:
        """Steps that must finish before ``name`` (experiment names and :data:`COORDS_STEP`)."""
        if name == COORDS_STEP:
            return list(self.coords_from)
        exp = next(e for e in self.experiments if e.name == name)
        deps = list(exp.depends_on)
        if exp.needs_coords and self.coords_from:
            deps.append(COORDS_STEP)
        return deps


def plan_experiments(pool: Sequence[Experiment], selected: Sequence[Experiment] | None = None,
                     coords_exist: bool = False) -> Plan:
    """Order ``selected`` (default: the whole ``pool``) plus what they depend on, drawn from ``pool``.

    A classifier that reads the runner's coordinates pulls in the pool's keypoint experiments unless
    ``coords_exist`` (the file is already there); a ``depends_on`` name found neither among the selected nor
    in the pool, a cycle, or two keypoint experiments of one task feeding the coordinates raise
    :class:`PlanError` naming them.
    """
    pool = check_unique_names(list(pool))
    by_name = {e.name: e for e in pool}
    chosen = list(pool if selected is None else selected)
    for e in chosen:
        by_name.setdefault(e.name, e)
    order_index = {e.name: i for i, e in enumerate([*chosen, *pool])}
    wanted: dict[str, Experiment] = {}
    stack = list(reversed(chosen))
    while stack:
        exp = stack.pop()
        if exp.name in wanted:
            continue
        wanted[exp.name] = exp
        for dep in exp.depends_on:
            if dep not in by_name:
                raise PlanError(f"experiment {exp.name!r} ({exp.path}) depends on {dep!r}, which is not among the "
                                f"experiments ({', '.join(sorted(by_name))})")
            stack.append(by_name[dep])
        if exp.needs_coords and not coords_exist:
            stack.extend(e for e in pool if e.kind == "keypoint")
    exps = list(wanted.values())
    keypoints = [e for e in exps if e.kind == "keypoint"]
    by_task: dict[str, list[str]] = {}
    for e in keypoints:
        by_task.setdefault(e.task, []).append(e.name)
    clash = {t: names for t, names in by_task.items() if len(names) > 1}
    if clash:
        t, names = next(iter(clash.items()))
        raise PlanError(f"keypoint experiments {', '.join(sorted(names))} are all task {t!r}: the coordinates file "
                        "takes one run per series type; pick one with --experiments")
    needs = [e for e in exps if e.needs_coords]
    coords_from = [e.name for e in keypoints]
    if needs and not keypoints and not coords_exist:
        raise PlanError(f"experiment {needs[0].name!r} reads the keypoint coordinates ({COORDS_SPEC}), but no "
                        "keypoint experiment is among the experiments and the file does not exist")
    ordered = _topological(exps, coords_from, lambda e: (KIND_ORDER[e.kind], order_index[e.name]))
    return Plan(ordered, coords_from)


def _topological(exps: list[Experiment], coords_from: list[str], key) -> list[Experiment]:
    """Kahn's order over depends_on (plus classifier -> keypoint edges through the coordinates), ties by ``key``."""
    coords_deps = set(coords_from)
    deps = {e.name: set(e.depends_on) | (coords_deps if e.needs_coords else set()) for e in exps}
    by_name = {e.name: e for e in exps}
    done: list[Experiment] = []
    left = dict(deps)
    while left:
        ready = [by_name[n] for n, d in left.items() if not (d - {x.name for x in done})]
        if not ready:
            raise PlanError(f"dependency cycle among experiments: {' -> '.join(_find_cycle(left))}")
        nxt = min(ready, key=key)
        done.append(nxt)
        del left[nxt.name]
    return done


def _find_cycle(deps: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph ``deps`` (every node of it has a dependency inside it), as a closed path."""
    path: list[str] = []
    node = next(iter(sorted(deps)))
    while node not in path:
        path.append(node)
        node = sorted(d for d in deps[node] if d in deps)[0]
    return path[path.index(node):] + [node]


# --------------------------------------------------------------------------- jobs and their scheduling
class Blocked(Exception):
    """A job cannot run now (an input it needs is missing); its dependants are skipped with the reason."""


@dataclass
class Job:
    """One unit of work: a fold of an experiment or a coordinates file.

    ``check()`` runs when the job's dependencies are finished: it returns a reason to skip it (already
    done), None to run it, or raises :class:`Blocked`. Serially the job runs ``call()`` in this process;
    on a GPU slot it runs ``command`` as a subprocess with ``CUDA_VISIBLE_DEVICES`` set to the slot.
    """

    name: str
    deps: list[str] = field(default_factory=list)
    call: Callable[[], object] | None = None
    command: list[str] | None = None
    check: Callable[[], str | None] = lambda: None
    log_file: Path | None = None
    before: Callable[[], object] | None = None  # run in this process before the job's call or command
    after: Callable[[], object] | None = None  # run in this process after the command succeeded


@dataclass
class JobResult:
    name: str
    status: str  # done | skipped | failed | blocked
    seconds: float = 0.0
    message: str = ""
    slot: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped")


def run_jobs(jobs: Sequence[Job], slots: Sequence[str | None] = (None,), poll_s: float = 0.1,
             env: dict | None = None) -> dict[str, JobResult]:
    """Run ``jobs`` in list order as their dependencies allow; returns every job's :class:`JobResult`.

    ``slots=(None,)``: one after another in this process (``job.call``). Otherwise each slot (a GPU id) runs
    one ``job.command`` subprocess at a time with ``CUDA_VISIBLE_DEVICES=<slot>``, output to ``job.log_file``.
    A failed job does not stop the others; jobs depending on it (directly or not) end ``blocked``. If the
    scheduler itself stops (Ctrl-C), its running subprocesses are terminated.
    """
    return _Scheduler(jobs, slots, poll_s, env).run()


class _Scheduler:
    def __init__(self, jobs: Sequence[Job], slots: Sequence[str | None], poll_s: float, env: dict | None):
        self.names = [j.name for j in jobs]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate job names in {self.names}")
        unknown = {d for j in jobs for d in j.deps} - set(self.names)
        if unknown:
            raise ValueError(f"jobs depend on unknown jobs {sorted(unknown)}")
        self.slots, self.poll_s, self.env = list(slots), poll_s, env
        self.serial = self.slots == [None]
        self.pending = list(jobs)
        self.free = list(slots)
        self.results: dict[str, JobResult] = {}
        self.running: dict[str, tuple[Job, subprocess.Popen, float, str]] = {}

    def run(self) -> dict[str, JobResult]:
        try:
            while self.pending or self.running:
                while self._start_next():
                    pass
                if self.running:
                    time.sleep(self.poll_s)
                    self._collect()
        except BaseException:
            for job, proc, _, _ in self.running.values():
                log.warning("stopping %s (pid %d)", job.name, proc.pid)
                proc.terminate()
            raise
        return {n: self.results[n] for n in self.names}

    def _start_next(self) -> bool:
        """Settle or start the first pending job that can move; False when none can."""
        for job in self.pending:
            bad = [d for d in job.deps if d in self.results and not self.results[d].ok]
            if bad:
                dep = self.results[bad[0]]
                self._finish(job, JobResult(job.name, "blocked", message=f"{dep.name} {dep.status}: "
                                            f"{dep.message or dep.status}"))
                return True
            if all(d in self.results for d in job.deps) and self.free:
                break
        else:
            return False
        try:
            skip = job.check()
        except Blocked as exc:
            self._finish(job, JobResult(job.name, "blocked", message=str(exc)))
            return True
        except Exception as exc:  # noqa: BLE001 - a job that cannot start fails alone
            self._finish(job, JobResult(job.name, "failed", message=f"{type(exc).__name__}: {exc}"))
            return True
        if skip:
            self._finish(job, JobResult(job.name, "skipped", message=skip))
            return True
        try:
            if job.before is not None:
                job.before()
        except Exception as exc:  # noqa: BLE001 - a job that cannot start fails alone
            self._finish(job, JobResult(job.name, "failed", message=f"{type(exc).__name__}: {exc}"))
            return True
        if self.serial:
            self._finish(job, _run_inline(job))
        else:
            self.pending.remove(job)
            slot = self.free.pop(0)
            self.running[job.name] = (job, *_start(job, slot, self.env), slot)
            log.info("%s: started on GPU %s%s", job.name, slot, f" (log {job.log_file})" if job.log_file else "")
        return True

    def _finish(self, job: Job, result: JobResult) -> None:
        self.pending.remove(job)
        self.results[job.name] = result
        if result.status == "blocked":
            log.warning("%s: not run, %s", job.name, result.message)
        elif result.status == "failed" and not result.seconds:
            log.error("%s: not started, %s", job.name, result.message)
        elif result.status == "skipped" and result.message:
            log.info("%s: skipped (%s)", job.name, result.message)

    def _collect(self) -> None:
        """Results of the subprocesses that ended; their slots are free again."""
        for name, (job, proc, t0, slot) in list(self.running.items()):
            if proc.poll() is None:
                continue
            del self.running[name]
            self.free.append(slot)
            self.free.sort(key=self.slots.index)
            seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                tail = _tail(job.log_file)
                self.results[name] = JobResult(name, "failed", seconds, f"exit status {proc.returncode}", slot)
                log.error("%s: failed on GPU %s (exit status %d) after %s%s", name, slot, proc.returncode,
                          format_seconds(seconds), f"; end of {job.log_file}:\n{tail}" if tail else "")
                continue
            try:
                if job.after is not None:
                    job.after()
            except Exception as exc:  # noqa: BLE001 - counts as a failed command
                self.results[name] = JobResult(name, "failed", seconds, f"{type(exc).__name__}: {exc}", slot)
                log.error("%s: finished on GPU %s, then failed: %s", name, slot, exc)
                continue
            self.results[name] = JobResult(name, "done", seconds, slot=slot)
            log.info("%s: done on GPU %s in %s", name, slot, format_seconds(seconds))


def _run_inline(job: Job) -> JobResult:
    t0 = time.perf_counter()
    log.info("%s: running", job.name)
    try:
        if job.call is None:
            raise ValueError(f"job {job.name} has nothing to run in this process (no call)")
        outcome = job.call()
        if job.after is not None:
            job.after()
    except Blocked as exc:
        return JobResult(job.name, "blocked", message=str(exc))
    except Exception as exc:  # noqa: BLE001 - one failed job must not stop the independent ones
        log.error("%s: failed after %s: %s\n%s", job.name, format_seconds(time.perf_counter() - t0), exc,
                  traceback.format_exc())
        return JobResult(job.name, "failed", time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - t0
    if outcome == "skipped":
        return JobResult(job.name, "skipped", seconds, "finished earlier")
    log.info("%s: done in %s", job.name, format_seconds(seconds))
    return JobResult(job.name, "done", seconds)


def _start(job: Job, slot: str | None, env: dict | None) -> tuple[subprocess.Popen, float]:
    if not job.command:
        raise ValueError(f"job {job.name} has no command to run on a GPU slot")
    child_env = {**os.environ, **(env or {})}
    if slot is not None:
        child_env["CUDA_VISIBLE_DEVICES"] = str(slot)
    out = None
    if job.log_file is not None:
        job.log_file.parent.mkdir(parents=True, exist_ok=True)
        out = open(job.log_file, "ab")  # noqa: SIM115 - the child keeps it; closed by the OS at its exit
    try:
        proc = subprocess.Popen(job.command, env=child_env, stdout=out, stderr=subprocess.STDOUT if out else None)
    finally:
        if out is not None:
            out.close()
    return proc, time.perf_counter()


def _tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def format_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def parse_ids(text: str | None, what: str) -> list[int] | None:
    """``"0,2"`` -> ``[0, 2]`` (None for None or empty); errors name the option."""
    if text is None or str(text).strip() == "":
        return None
    try:
        ids = [int(x) for x in str(text).replace(" ", "").split(",") if x != ""]
    except ValueError as exc:
        raise PlanError(f"{what}: expected comma-separated integers such as 0,2, got {text!r}") from exc
    if any(i < 0 for i in ids):
        raise PlanError(f"{what}: ids must be 0 or more, got {text!r}")
    return ids


# --------------------------------------------------------------------------- the pipeline
@dataclass
class RunOptions:
    """What ``python main.py`` / ``rsna2024 run`` was asked for (see :func:`add_run_arguments`)."""

    data: Path
    experiments_dir: Path = Path("experiments")
    experiments: list[str] | None = None  # names or YAML paths (and folders, which replace experiments_dir)
    runs: Path = Path("runs")
    cache: Path | None = None  # preprocessing cache root (default: beside the data folder)
    folds: list[int] | None = None  # None: every fold of folds.csv
    device: str | None = None  # auto | cpu | cuda; None: each config's own
    gpus: list[int] | None = None  # one subprocess per GPU at a time
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE for every experiment
    workers: int = 2  # preprocessing processes


def add_run_arguments(p, experiments_default: str = "experiments/", runs_default: str = "runs") -> None:
    """The runner's options on an argparse parser (``main.py`` and ``rsna2024 run`` share them)."""
    p.add_argument("--experiments", nargs="+", default=None, metavar="NAME",
                   help=f"experiments to run: names in the experiments folder ({experiments_default}), YAML files, "
                        "or a folder of YAML files; their dependencies join them (default: every config there)")
    p.add_argument("--folds", default=None, metavar="K,K", help="folds of folds.csv to train, e.g. 0,2 (default: all)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="device of every experiment (default: each config's own, normally auto = CUDA when present)")
    p.add_argument("--gpus", default=None, metavar="G,G",
                   help="run one fold per GPU at once, each a subprocess pinned by CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3")
    p.add_argument("--runs", type=Path, default=None,
                   help=f"runs folder: <runs>/<experiment>/, coordinates and oof_scores.csv (default: {runs_default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of every experiment config, e.g. --set epochs=2 (repeatable)")


def options_from_args(args, data: Path, experiments_dir: Path, runs: Path = Path("runs")) -> RunOptions:
    """:class:`RunOptions` from the parsed arguments (``runs``: the default of ``--runs``)."""
    return RunOptions(data=Path(data), experiments_dir=Path(experiments_dir), experiments=args.experiments,
                      runs=Path(args.runs or runs), cache=args.cache, folds=parse_ids(args.folds, "--folds"),
                      device=args.device, gpus=parse_ids(args.gpus, "--gpus"), overrides=list(args.overrides),
                      workers=args.workers)


def prepare_data(data: Path, cache: Path | None, workers: int, n_folds: int = 5) -> bool:
    """Validate the data folder (report printed), write ``folds.csv`` (``n_folds`` folds) when absent and fill
    the cache."""
    from rsna2024.data.folds import FOLDS_FILE, make_folds
    from rsna2024.data.validate import validate_data
    from rsna2024.dicom.cache import load_cache_index, preprocess, summarize_index
    from rsna2024.errors import RsnaError

    t0 = time.perf_counter()
    report = validate_data(data, images=True, workers=workers)
    print(report.format())
    if not report.ok:  # a CSV breaks the contract; image problems are only warnings
        return False
    if not (data / FOLDS_FILE).exists():
        make_folds(data, n_folds=n_folds)
    log.info("folds: %s", data / FOLDS_FILE)
    try:
        index = preprocess(data, cache_root=cache, split="all", workers=workers)
    except RsnaError as exc:  # every series failed
        log.error("%s", exc)
        return False
    table = load_cache_index(index)
    for row in table[table["status"] == "failed"].itertuples(index=False):
        log.warning("study %s, series %s left out (preprocessing failed): %s", row.study_id, row.series_id, row.error)
    log.info("data ready in %s (cache index %s: %s)", format_seconds(time.perf_counter() - t0), index,
             summarize_index(table))
    return True


def _pool_and_selection(opts: RunOptions) -> tuple[list[Experiment], list[Experiment] | None]:
    items = list(opts.experiments or [])
    folders = [Path(i) for i in items if Path(i).is_dir()]
    rest = [i for i in items if not Path(i).is_dir()]
    overrides = [*opts.overrides, *device_override(opts)]
    pool = check_unique_names([e for f in (folders or [opts.experiments_dir]) for e in
                               discover_experiments(f, overrides)])
    if folders and not rest:
        return pool, None
    return pool, select_experiments(pool, rest, overrides) if rest else None


class FoldJobs:
    """Builds the jobs of a plan: ``<experiment> fold <k>`` per experiment and fold, and the coordinates."""

    def __init__(self, plan: Plan, configs: dict, opts: RunOptions, fold_ids: list[int], n_folds: int):
        self.plan, self.configs, self.opts, self.fold_ids, self.n_folds = plan, configs, opts, fold_ids, n_folds
        self.device_override = device_override(opts)
        for e in plan.experiments:
            if configs[e.name].folds != n_folds:
                raise PlanError(f"{e.path}: folds: {configs[e.name].folds}, but {opts.data / 'folds.csv'} has "
                                f"{n_folds} folds (remove folds.csv to have it rewritten, or --set folds={n_folds})")

    def run_dir(self, name: str) -> Path:
        return self.opts.runs / name

    @staticmethod
    def fold_job(name: str, k: int) -> str:
        return f"{name} fold {k}"

    def coords_job(self, split: str) -> str:
        return f"{COORDS_STEP} ({'out of fold' if split == 'train' else 'test'})"

    def jobs(self) -> list[Job]:
        out: list[Job] = []
        for step in self.plan.steps:
            if step == COORDS_STEP:
                out += [self._coords(split) for split in COORDS_FILES]
                continue
            deps = []
            for d in self.plan.dependencies(step):
                deps += [self.coords_job("train")] if d == COORDS_STEP else \
                    [self.fold_job(d, k) for k in self.fold_ids]
            out += [self._train(step, k, deps) for k in self.fold_ids]
        return out

    # ----------------------------------------------------------------- training
    def _train(self, name: str, k: int, deps: list[str]) -> Job:
        from rsna2024.training.checkpoint import done_path

        exp = next(e for e in self.plan.experiments if e.name == name)
        opts = self.opts
        command = [sys.executable, "-m", "rsna2024.cli", "train", "--config", str(exp.path), "--data", str(opts.data),
                   "--fold", str(k), "--out", str(opts.runs), *(["--cache", str(opts.cache)] if opts.cache else [])]
        for item in [*opts.overrides, *(self.device_override or ["device=cuda"])]:
            command += ["--set", item]

        def check() -> str | None:
            check_run_config(self.configs[name], self.run_dir(name))
            return "finished earlier" if done_path(self.run_dir(name), k).is_file() else None

        def call() -> str:
            from rsna2024.training.trainer import train_fold

            result = train_fold(self.configs[name], opts.data, k, out=opts.runs, cache=opts.cache)
            return "skipped" if result.skipped else "done"

        return Job(self.fold_job(name, k), deps=deps, call=call, command=command, check=check,
                   log_file=opts.runs / "logs" / f"{name}_fold{k}.log")

    # ----------------------------------------------------------------- coordinates
    def coords_inputs(self) -> dict:
        """Per keypoint run, a digest of each fold's ``done`` marker: the coordinates' provenance."""
        import hashlib

        from rsna2024.training.checkpoint import done_path

        out: dict[str, dict[str, str | None]] = {}
        for name in self.plan.coords_from:
            out[name] = {}
            for k in range(self.n_folds):
                p = done_path(self.run_dir(name), k)
                out[name][str(k)] = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else None
        return out

    def _coords(self, split: str) -> Job:
        import json

        from rsna2024.utils.io import atomic_write_text

        opts = self.opts
        out = opts.runs / COORDS_FILES[split]
        sidecar = out.with_suffix(".inputs.json")
        runs = [self.run_dir(n) for n in self.plan.coords_from]
        device = opts.device or "auto"
        deps = [self.fold_job(n, k) for n in self.plan.coords_from for k in self.fold_ids]
        command = [sys.executable, "-m", "rsna2024.cli", "coords", "--data", str(opts.data), "--runs",
                   *map(str, runs), "--split", split, "--out", str(out), "--device", opts.device or "cuda",
                   "--overwrite", *(["--cache", str(opts.cache)] if opts.cache else [])]

        def check() -> str | None:
            inputs = self.coords_inputs()
            unfinished = {n: [int(k) for k, v in folds.items() if v is None] for n, folds in inputs.items()}
            unfinished = {n: ks for n, ks in unfinished.items() if ks}
            if unfinished:
                what = "; ".join(f"{n} fold(s) {', '.join(map(str, ks))}" for n, ks in unfinished.items())
                raise Blocked(f"{COORDS_FILES[split]} needs every fold of the keypoint runs; not finished: {what}")
            if split == "test" and not self._has_test_series():
                return "no test series in the cache"
            recorded = json.loads(sidecar.read_text()) if sidecar.is_file() else None
            if out.is_file():
                if recorded is None:
                    return f"{out} exists and was not made by the runner: kept as it is"
                if recorded == inputs:
                    return f"{out} is up to date"
                if recorded == PENDING:
                    log.warning("%s: the run making it was interrupted; predicting it again", out)
                else:
                    log.warning("%s: the keypoint runs changed since it was made; predicting it again", out)
            return None

        def before() -> None:  # until after() records the inputs, the file counts as unfinished
            atomic_write_text(sidecar, json.dumps(PENDING))

        def call() -> None:
            from rsna2024.keypoints.coords import write_coordinates
            from rsna2024.keypoints.studies import resolve_cache

            write_coordinates(opts.data, runs, split, out, resolve_cache(opts.data, opts.cache), overwrite=True,
                              device=device)

        def after() -> None:
            atomic_write_text(sidecar, json.dumps(self.coords_inputs(), indent=1))

        return Job(self.coords_job(split), deps=deps, call=call, command=command, check=check, before=before,
                   after=after, log_file=opts.runs / "logs" / f"coords_{split}.log")

    def _has_test_series(self) -> bool:
        from rsna2024.dicom.cache import load_cache_index
        from rsna2024.keypoints.studies import resolve_cache

        index = load_cache_index(resolve_cache(self.opts.data, self.opts.cache))
        return bool((index["split"] == "test").any())


def check_run_config(cfg, run_dir: Path) -> None:
    """Raise ConfigError when ``run_dir`` was trained with another config than ``cfg`` (as the fold trainer
    does before training), so a finished fold of a changed config is never taken as done."""
    from rsna2024.training.checkpoint import CONFIG_FILE
    from rsna2024.training.config import config_differences, config_to_dict

    path = run_dir / CONFIG_FILE
    if path.is_file():
        diffs = config_differences(yaml.safe_load(path.read_text()) or {}, config_to_dict(cfg))
        if diffs:
            raise ConfigError(f"{path} was written by a different config ({'; '.join(diffs[:5])}); use another "
                              "experiment name or --runs folder, or remove the run folder to train it again")


def _slots(gpus: list[int] | None) -> list[str | None]:
    if not gpus:
        return [None]
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise PlanError("--gpus needs CUDA devices, and none is visible here; run without --gpus to train the "
                        "folds one after another")
    bad = [g for g in gpus if g >= count]
    if bad:
        raise PlanError(f"--gpus {','.join(map(str, gpus))}: GPU {bad[0]} does not exist ({count} visible: "
                        f"0..{count - 1})")
    return [str(g) for g in gpus]


def device_override(opts: RunOptions) -> list[str]:
    return [f"device={opts.device}"] if opts.device else []


def load_plan(opts: RunOptions) -> tuple[Plan, dict]:
    """The plan and every experiment's typed config (overrides applied), checked before anything runs."""
    pool, selected = _pool_and_selection(opts)
    plan = plan_experiments(pool, selected, coords_exist=(opts.runs / COORDS_FILES["train"]).is_file())
    return plan, {e.name: e.config for e in plan.experiments}


def folds_wanted(configs: dict) -> int:
    """The number of folds the configs train (5 without configs); configs that disagree raise PlanError."""
    counts = {name: cfg.folds for name, cfg in configs.items()}
    if len(set(counts.values())) > 1:
        raise PlanError("the experiments ask for different numbers of folds: "
                        + ", ".join(f"{n} {k}" for n, k in counts.items()) + " (use --set folds=K for all)")
    return next(iter(counts.values()), 5)


def run_experiments(opts: RunOptions, planned: tuple[Plan, dict] | None = None) -> int:
    """Plan, train every fold, make the coordinates, print and write the OOF table. 0 when every job ended well."""
    from rsna2024.data.folds import FOLDS_FILE, load_folds
    from rsna2024.training import report

    plan, configs = planned or load_plan(opts)
    folds = load_folds(opts.data / FOLDS_FILE)
    n_folds = int(folds["fold"].max()) + 1
    fold_ids = opts.folds if opts.folds is not None else list(range(n_folds))
    bad = [k for k in fold_ids if k >= n_folds]
    if bad:
        raise PlanError(f"--folds: fold {bad[0]} does not exist ({opts.data / FOLDS_FILE} has folds 0..{n_folds - 1})")
    slots = _slots(opts.gpus)
    builder = FoldJobs(plan, configs, opts, fold_ids, n_folds)
    jobs = builder.jobs()
    log.info("plan: %s; folds %s; %s", " -> ".join(plan.steps) or "nothing", ",".join(map(str, fold_ids)),
             "serial in this process" if slots == [None] else f"one job per GPU on GPUs {','.join(slots)}")
    t0 = time.perf_counter()
    results = run_jobs(jobs, slots)
    print(format_timings(plan, builder, results, time.perf_counter() - t0))

    classifiers = [(e.name, e.family) for e in plan.experiments if e.kind == "classifier"]
    unfinished = {}
    for e in plan.experiments:
        if e.kind not in ("classifier", "baseline"):
            continue
        bad = [results[builder.fold_job(e.name, k)] for k in fold_ids if not results[builder.fold_job(e.name, k)].ok]
        if bad:
            why = bad[0].message.split(";")[0]
            unfinished[e.name] = f"fold {bad[0].name.rsplit(' ', 1)[-1]} {bad[0].status}: {why}"
    table = report.oof_table(opts.data, opts.runs, classifiers, folds, fold_ids, unfinished)
    print(report.format_table(table, _table_title(fold_ids, int(table["studies"].iloc[-1]))))
    report.write_table(table, opts.runs)
    compared = [opts.runs / e.name for e in plan.experiments
                if e.kind in ("baseline", "classifier") and e.name not in unfinished]
    if any(e.kind == "baseline" for e in plan.experiments) and compared:
        text = report.comparison(opts.data, compared, opts.runs / "compare", opts.data / FOLDS_FILE)
        if text:
            print(text)
    errors = report.keypoint_errors(opts.data, opts.runs / COORDS_FILES["train"], opts.runs / "keypoint_report",
                                    opts.cache)
    if errors is not None:
        print(errors)
    failed = [r for r in results.values() if r.status in ("failed", "blocked")]
    if failed:
        log.error("%d job(s) did not finish: %s", len(failed), ", ".join(f"{r.name} ({r.status})" for r in failed))
        log.info("no submission: predict runs once every job has finished")
        return 1
    return predict_step(opts, plan)


# --------------------------------------------------------------------------- the submission
def submission_runs(opts: RunOptions, plan: Plan) -> list[Path]:
    """The run folders the runner's submission blends: the keypoint runs and the classifier runs (split_*,
    global), or the seed baselines when the plan has no classifier."""
    kinds = {e.kind for e in plan.experiments}
    predicting = "classifier" if "classifier" in kinds else "baseline"
    return [opts.runs / e.name for e in plan.experiments if e.kind in ("keypoint", predicting)]


def _submission_inputs(runs: list[Path], test_csv: Path) -> dict:
    """What the submission depends on: each run's config and fold models (size, modification time) and the test
    series descriptions."""
    import hashlib

    files = {str(run.name): {p.name: [p.stat().st_size, p.stat().st_mtime_ns]
                             for p in sorted([run / "config.yaml", *run.glob("fold*_best.pt")]) if p.is_file()}
             for run in runs}
    return {"runs": files, "test_series": hashlib.sha1(test_csv.read_bytes()).hexdigest()}


def predict_step(opts: RunOptions, plan: Plan) -> int:
    """``rsna2024 predict`` on the data folder's test split into ``<runs>/submission.csv`` (when the folder has test
    studies), then where the submission is and how to package the runs for Kaggle. A submission made from the
    same runs (``submission.inputs.json``) is kept; one the runs changed since is predicted again and replaced
    (said in the log). 0 when done or nothing to do, 1 when predict failed."""
    import json

    from rsna2024.constants import SERIES_DESCRIPTIONS_FILE
    from rsna2024.utils.io import atomic_write_text

    test_csv = opts.data / SERIES_DESCRIPTIONS_FILE.format(split="test")
    runs = submission_runs(opts, plan)
    if not test_csv.is_file():
        log.info("no submission: %s has no test split (%s)", opts.data, test_csv.name)
        return 0
    kinds = {e.kind for e in plan.experiments}
    if "keypoint" not in kinds or not kinds & {"classifier", "baseline"}:
        log.info("no submission: it needs keypoint runs and classifier (or baseline) runs among the experiments")
        return 0
    out, sidecar = opts.runs / SUBMISSION_FILE, opts.runs / SUBMISSION_INPUTS
    inputs = _submission_inputs(runs, test_csv)
    if out.is_file() and not sidecar.is_file():
        log.info("%s exists and was not made by the runner: kept as it is", out)
    elif out.is_file() and json.loads(sidecar.read_text()) == inputs:
        log.info("%s is up to date (same runs and test studies)", out)
    else:
        if out.is_file():
            log.warning("%s: the runs changed since it was made; predicting it again (it is replaced)", out)
        from rsna2024.dicom.cache import default_cache_root
        from rsna2024.inference.predict import predict_submission

        try:
            result = predict_submission(opts.data, runs, out, cache=opts.cache or default_cache_root(opts.data),
                                        device=opts.device or "auto", overwrite=True, workers=opts.workers)
        except Exception as exc:  # noqa: BLE001 - training is done; say why the submission is missing
            log.error("predict failed: %s\n%s", exc, traceback.format_exc())
            return 1
        atomic_write_text(sidecar, json.dumps(inputs, indent=1))
        print(result.format_summary())
    print(f"submission: {out}\n"
          f"Kaggle package of these runs: rsna2024 kaggle package --runs {' '.join(map(str, runs))} "
          f"--name NAME --out kernels/build (then rsna2024 kaggle push; see kernels/README.md)")
    return 0


def _table_title(fold_ids: list[int], studies: int) -> str:
    return (f"OOF scores, folds {','.join(map(str, fold_ids))} ({studies} studies), on predicted keypoint coordinates "
            f"(true_pts: total on the true points; vs_prior: total / the prior's total)")


def format_timings(plan: Plan, builder: FoldJobs, results: dict[str, JobResult], seconds: float) -> str:
    """One line per step: folds trained / skipped / not finished, and the seconds spent."""
    lines = [f"steps ({format_seconds(seconds)} in all)"]
    for step in plan.steps:
        names = [builder.coords_job(s) for s in COORDS_FILES] if step == COORDS_STEP else \
            [builder.fold_job(step, k) for k in builder.fold_ids]
        rs = [results[n] for n in names if n in results]
        count = {s: sum(r.status == s for r in rs) for s in ("done", "skipped", "failed", "blocked")}
        text = ", ".join(f"{v} {k}" for k, v in count.items() if v)
        lines.append(f"  {step:<28} {text:<32} {format_seconds(sum(r.seconds for r in rs))}")
    return "\n".join(lines)


def run_pipeline(opts: RunOptions) -> int:
    """Data (validate, folds, cache) then :func:`run_experiments`; 1 when the data is invalid. Temporaries a
    killed run left in the runs folder and beside the data's CSVs are removed first (the cache's by the cache)."""
    from rsna2024.utils.io import clean_stale_temporaries

    t0 = time.perf_counter()
    clean_stale_temporaries(opts.runs)
    clean_stale_temporaries(opts.data, recursive=False)
    planned = load_plan(opts)
    if not prepare_data(opts.data, opts.cache, opts.workers, folds_wanted(planned[1])):
        return 1
    rc = run_experiments(opts, planned)
    log.info("finished in %s", format_seconds(time.perf_counter() - t0))
    return rc
