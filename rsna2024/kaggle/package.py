"""``rsna2024 kaggle package``: the two folders a Kaggle submission is made of.

``<out>/dataset/`` (a private Kaggle dataset, attached to the kernel read-only)::

    dataset-metadata.json       id <user>/<slug>, title, licence CC0-1.0
    rsna2024-package.json       what is inside: kit version, runs and their folds, wheels, exclusions
    runs/<experiment>/          each run's config.yaml, fold{k}_best.pt and prior.csv (when it has one)
    wheels/                     the kit's wheel (built from this checkout) and its dependencies' wheels

``<out>/kernel/``: ``kernel-metadata.json`` (a private notebook, GPU on, internet off, the competition and the
dataset as sources) and ``<slug>.ipynb``, rendered from ``kernels/inference.ipynb``. Both folders are built in a
temporary folder beside them and moved into place at the end; existing ones are replaced only with ``overwrite``.
"""
from __future__ import annotations

import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rsna2024 import __version__
from rsna2024.baselines.prior import PRIOR_FILE
from rsna2024.errors import ConfigError
from rsna2024.kaggle import COMPETITION, DEFAULT_EXCLUDE
from rsna2024.kaggle import metadata as meta
from rsna2024.kaggle import notebook as nbk
from rsna2024.kaggle import wheels as wh
from rsna2024.training.checkpoint import CONFIG_FILE, best_path, done_path, run_task
from rsna2024.training.checkpoint import run_folds as checkpoint_folds
from rsna2024.utils.io import check_overwrite, clean_stale_temporaries, temporary_folder
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)
MANIFEST = "rsna2024-package.json"


@dataclass
class PackageResult:
    dataset_dir: Path
    kernel_dir: Path
    dataset_id: str
    kernel_id: str
    runs: dict[str, list[int]]
    kit_wheel: str
    dependency_wheels: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    size_bytes: int = 0

    def format(self) -> str:
        runs = ", ".join(f"{name} (folds {', '.join(map(str, folds))})" for name, folds in self.runs.items())
        deps = (f"{len(self.dependency_wheels)} dependency wheels (excluded: {', '.join(self.excluded) or 'none'})"
                if self.dependency_wheels else "no dependency wheels")
        return (f"dataset {self.dataset_id}: {self.dataset_dir} ({self.size_bytes / 2**20:.1f} MiB; runs {runs}; "
                f"{self.kit_wheel} and {deps})\n"
                f"kernel  {self.kernel_id}: {self.kernel_dir}\n"
                f"next: rsna2024 kaggle push --dataset {self.dataset_dir} --kernel {self.kernel_dir}")


def run_folds(run_dir: Path) -> list[int]:
    """The folds of a run folder that have a best checkpoint; ConfigError unless it holds config.yaml and one."""
    run_dir = Path(run_dir)
    run_task(run_dir)  # a ConfigError unless it is a run folder with a config naming its task
    folds = checkpoint_folds(run_dir)
    if not folds:
        raise ConfigError(f"{run_dir}: no fold*_best.pt (no fold of this run has finished an epoch)")
    unfinished = [k for k in folds if not done_path(run_dir, k).is_file()]
    if unfinished:
        log.warning("%s: folds %s are not finished (no fold{k}_done.json): their best checkpoint so far is packaged",
                    run_dir, unfinished)
    return folds


def _copy_runs(runs: Sequence[Path], dest: Path) -> dict[str, list[int]]:
    packaged: dict[str, list[int]] = {}
    for run_dir in runs:
        run_dir = Path(run_dir)
        name = run_dir.resolve().name
        if name in packaged:
            raise ConfigError(f"--runs: two run folders are named {name!r}; Kaggle's package keeps runs/<name>/")
        folds = run_folds(run_dir)
        (dest / name).mkdir(parents=True)
        shutil.copy2(run_dir / CONFIG_FILE, dest / name / CONFIG_FILE)
        if (run_dir / PRIOR_FILE).is_file():  # predict's fallback when the data folder has no train.csv
            shutil.copy2(run_dir / PRIOR_FILE, dest / name / PRIOR_FILE)
        for k in folds:
            shutil.copy2(best_path(run_dir, k), best_path(dest / name, k))
        packaged[name] = folds
    return packaged


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_package(runs: Sequence[Path], name: str, out: Path = Path("kernels/build"), user: str | None = None,
                  exclude: Sequence[str] = DEFAULT_EXCLUDE, deps_wheels: bool = True,
                  python_version: str | None = None, overwrite: bool = False,
                  template: Path | None = None) -> PackageResult:
    """Build ``<out>/dataset`` and ``<out>/kernel`` (see the module docstring) for the run folders ``runs``.

    ``name``: the title of the dataset and the kernel (their slug is its :func:`~metadata.slugify`); ``user``: the
    Kaggle user owning them (default: that of the configured credentials); ``exclude``: fnmatch patterns of the
    dependencies left out of ``wheels/``; ``deps_wheels=False`` packages the kit's wheel only; ``python_version``
    (``X.Y``): fetch the dependency wheels for that CPython on manylinux (default: this interpreter)."""
    from rsna2024.kaggle.api import configured_username

    if not runs:
        raise ConfigError("--runs: give at least one run folder")
    slug = meta.check_name(name)
    if python_version is not None and not re.fullmatch(r"3\.\d+", python_version):
        raise ConfigError(f"--python-version {python_version!r}: expected X.Y, e.g. 3.11")
    user = user or configured_username()
    if not user:
        raise ConfigError("--user: no Kaggle user name given, and no credentials name one (KAGGLE_USERNAME, or "
                          "username in ~/.kaggle/kaggle.json)")
    meta.check_user(user)
    out = Path(out)
    targets = [out / "dataset", out / "kernel"]
    for target in targets:
        check_overwrite(target, overwrite)
    for run_dir in runs:  # fail on a bad run folder before the slow steps
        run_folds(run_dir)
    template = Path(template) if template is not None else nbk.default_template()
    nbk.load_template(template)

    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(out, recursive=False)  # what a killed packaging left behind
    started = time.perf_counter()
    with temporary_folder(out, "package") as tmp:
        dataset, kernel = tmp / "dataset", tmp / "kernel"
        packaged = _copy_runs(runs, dataset / "runs")
        kit = wh.build_kit_wheel(dataset / "wheels")
        log.info("built %s", kit.name)
        deps: list[Path] = []
        excluded: list[str] = []
        if deps_wheels:
            pins, excluded = wh.dependency_pins(wh.wheel_requirements(kit), exclude, python_version)
            log.info("fetching %d dependency wheels (excluded: %s)", len(pins), ", ".join(excluded) or "none")
            deps = [p for p in wh.fetch_wheels(pins, dataset / "wheels", python_version) if p != kit]
        dataset_id = f"{user}/{slug}"
        meta.write_json(dataset / meta.DATASET_METADATA, meta.dataset_metadata(user, slug, name))
        meta.write_json(dataset / MANIFEST, {
            "kit_version": __version__, "kit_wheel": kit.name, "runs": packaged,
            "dependency_wheels": [p.name for p in deps], "excluded": excluded,
            "python_version": python_version or wh.current_python(), "competition": COMPETITION})

        code_file = f"{slug}.ipynb"
        values = {"title": name, "kit_version": __version__, "dataset_id": dataset_id, "dataset_slug": slug,
                  "competition": COMPETITION}
        nbk.write_notebook(nbk.render_notebook(template, values), kernel / code_file)
        meta.write_json(kernel / meta.KERNEL_METADATA, meta.kernel_metadata(user, slug, name, code_file, dataset_id))

        for target, built in zip(targets, (dataset, kernel), strict=True):
            if target.exists():
                shutil.rmtree(target)
            built.rename(target)
    result = PackageResult(targets[0], targets[1], dataset_id, f"{user}/{slug}", packaged, kit.name,
                           [p.name for p in deps], excluded, _folder_size(targets[0]))
    log.info("package built in %.1f s", time.perf_counter() - started)
    return result
