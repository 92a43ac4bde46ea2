"""The packaged kernel notebook executed with nbclient as Kaggle runs it: phantom test studies laid out like
``/kaggle/input/...``, no network (a new network namespace where the machine allows it), a fresh Python whose
preinstalled packages are this environment's minus the kit (as Kaggle's image), the kit installed only from the
package's wheels, then ``rsna2024 predict`` writing ``submission.csv``.

The runs packaged are every demo experiment (keypoints, split and global classifiers, seed baselines) trained by
``rsna2024 run`` (the session fixture ``demo_runs``: 2 folds, one epoch).
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pandas as pd
import pytest
from kaggle_helpers import offline

from rsna2024 import __version__
from rsna2024.cli import main
from rsna2024.constants import study_row_ids
from rsna2024.kaggle import COMPETITION
from rsna2024.metric import check_submission

NAME = "RSNA notebook test"
SLUG = "rsna-notebook-test"
DRIVER = """
import sys
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

source, executed, cwd = sys.argv[1:4]
nb = nbformat.read(source, as_version=4)
try:
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
except CellExecutionError as exc:
    print(str(exc)[-3000:], file=sys.stderr)
    sys.exit(3)
finally:
    nbformat.write(nb, executed)
"""


def kaggle_like_python(folder: Path) -> Path:
    """A venv (``--system-site-packages``) that also sees every package of this environment except the kit, through
    a folder of links named in a .pth file: Kaggle's image, with torch and the rest preinstalled and no rsna2024."""
    env = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env)], check=True)
    image = folder / "image-site-packages"
    image.mkdir()
    for site_dir in site.getsitepackages():
        for entry in Path(site_dir).iterdir():
            if "rsna2024" in entry.name.lower() or entry.suffix == ".pth" or (image / entry.name).exists():
                continue
            (image / entry.name).symlink_to(entry)
    (venv_site,) = env.glob("lib/python*/site-packages")
    (venv_site / "kaggle-image.pth").write_text(f"{image}\n")
    return env / "bin" / "python"


@pytest.fixture(scope="module")
def executed(demo_runs, phantom_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kaggle")
    build = tmp / "build"
    assert main(["kaggle", "package", "--runs", *map(str, demo_runs.run_dirs), "--name", NAME, "--out", str(build),
                 "--user", "tester", "--no-deps-wheels"]) == 0
    inputs, working = tmp / "kaggle" / "input", tmp / "kaggle" / "working"
    inputs.mkdir(parents=True)
    working.mkdir()
    (inputs / COMPETITION).symlink_to(phantom_dir, target_is_directory=True)
    shutil.copytree(build / "dataset", inputs / SLUG)
    python = kaggle_like_python(tmp)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("KAGGLE_", "PIP_"))}
    env.update(RSNA2024_DATA=str(inputs / COMPETITION), RSNA2024_PACKAGE=str(inputs / SLUG),
               RSNA2024_OUTPUT=str(working), RSNA2024_CACHE=str(tmp / "kaggle" / "temp" / "cache"),
               PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}", PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_CONFIG_FILE=os.devnull, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    data_files = sorted(p.relative_to(phantom_dir) for p in phantom_dir.rglob("*"))
    out_nb = tmp / "executed.ipynb"
    proc = subprocess.run(offline([python, "-c", DRIVER, build / "kernel" / f"{SLUG}.ipynb", out_nb, working]),
                          env=env, cwd=working, capture_output=True, text=True, timeout=1200)
    assert out_nb.is_file(), proc.stderr[-3000:]
    return SimpleNamespace(proc=proc, nb=nbformat.read(out_nb, as_version=4), working=working, env=env, build=build,
                           venv=python.parent.parent, phantom=phantom_dir, data_files=data_files)


def _text(cell) -> str:
    return "".join(o.get("text", "") if o["output_type"] == "stream" else "\n".join(o.get("traceback", []))
                   for o in cell.get("outputs", []))


def test_package_ships_the_runs_priors(executed, demo_runs):
    """Each classifier run's prior.csv travels with its weights: predict's fallback without train.csv."""
    from rsna2024.baselines.prior import PRIOR_FILE

    for run in demo_runs.run_dirs:
        packaged = executed.build / "dataset" / "runs" / run.name / PRIOR_FILE
        assert packaged.is_file() == (not run.name.startswith("keypoint_")), run.name
        if packaged.is_file():
            assert packaged.read_text() == (run / PRIOR_FILE).read_text()


def test_notebook_installs_the_kit_offline_from_the_package_wheels_only(executed):
    cells = [c for c in executed.nb.cells if c.cell_type == "code"]
    for cell in cells[:-1]:
        assert not [o for o in cell.outputs if o["output_type"] == "error"], _text(cell)
    paths, install = _text(cells[0]), _text(cells[1])
    assert f"package: {executed.env['RSNA2024_PACKAGE']}" in paths
    assert f"data:    {executed.env['RSNA2024_DATA']}" in paths
    assert "--no-index --find-links" in install
    # only the kit was installed: every dependency was kept from the image (torch included)
    assert f"Successfully installed rsna2024-{__version__}\n" in install, install
    (site_dir,) = executed.venv.glob("lib/python*/site-packages")
    assert f"rsna2024 {__version__} from {site_dir / 'rsna2024' / '__init__.py'}" in install, install


def test_notebook_predict_cell_writes_a_complete_submission(executed):
    predict = executed.nb.cells[-1]
    assert executed.proc.returncode == 0, _text(predict)[-3000:] + executed.proc.stderr[-3000:]
    submission = pd.read_csv(executed.working / "submission.csv")
    studies = pd.read_csv(executed.phantom / "test_series_descriptions.csv")["study_id"].unique()
    expected = [rid for study in sorted(studies) for rid in study_row_ids(int(study))]
    check_submission(submission, expected_row_ids=expected)
    assert sorted(submission["row_id"]) == sorted(expected) and submission["row_id"].is_unique
    values = submission.drop(columns="row_id").to_numpy()
    assert ((values >= 0) & (values <= 1)).all()
    assert abs(values.sum(axis=1) - 1).max() < 1e-4
    assert f"submission.csv: {len(expected)} rows" in _text(predict)
    assert sorted(p.relative_to(executed.phantom) for p in executed.phantom.rglob("*")) == executed.data_files
