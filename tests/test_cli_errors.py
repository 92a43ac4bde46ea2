"""Bad input to every command ends in one line naming the problem and exit code 2 (130 for Ctrl-C), never a
traceback; ``--debug`` shows the traceback. One test per case: arguments, CSV files, submissions, output folders."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from kaggle_folder import write_folder

from rsna2024.cli import main
from rsna2024.data.contract import load_labels_long
from rsna2024.utils.command import run_guarded

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The command's message: the last line of stderr; no traceback and no other error line before it."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert sum("error:" in line for line in lines) == 1, err
    return lines[-1]


@pytest.fixture
def data(tmp_path) -> Path:
    return write_folder(tmp_path / "data", n_studies=10)


def constant_submission(data: Path, studies: int | None = None) -> pd.DataFrame:
    """Predictions 0.7 / 0.2 / 0.1 for every row of ``train.csv`` (of its first ``studies`` studies)."""
    long = load_labels_long(data)
    if studies is not None:
        long = long[long["study_id"].isin(sorted(long["study_id"].unique())[:studies])]
    return long[["row_id"]].assign(normal_mild=0.7, moderate=0.2, severe=0.1)


# --------------------------------------------------------------------------- arguments
BAD_ARGUMENTS = {
    "negative studies": (["synth", "--out", "{tmp}/out", "--studies", "-1"], "--studies",
                         "expected a whole number >= 1, got -1"),
    "zero studies": (["synth", "--out", "{tmp}/out", "--studies", "0"], "--studies", ">= 1, got 0"),
    "fractional studies": (["synth", "--out", "{tmp}/out", "--studies", "2.5"], "--studies", "got '2.5'"),
    "negative test studies": (["synth", "--out", "{tmp}/out", "--test-studies", "-2"], "--test-studies",
                              "expected a whole number >= 0, got -2"),
    "zero workers (synth)": (["synth", "--out", "{tmp}/out", "--workers", "0"], "--workers", ">= 1, got 0"),
    "negative seed": (["synth", "--out", "{tmp}/out", "--seed", "-3"], "--seed", ">= 0, got -3"),
    "unknown size": (["synth", "--out", "{tmp}/out", "--size", "huge"], "--size", "invalid choice: 'huge'"),
    "synth out is a file": (["synth", "--out", "{data}/train.csv"], "--out", "train.csv is not a folder"),
    "preview is a folder": (["synth", "--out", "{tmp}/out", "--preview", "{data}"], "--preview", "is a folder"),
    "one fold": (["folds", "--data", "{data}", "--n-folds", "1"], "--n-folds", "expected a whole number >= 2, got 1"),
    "non-numeric seed": (["folds", "--data", "{data}", "--seed", "x"], "--seed", "got 'x'"),
    "folds out is a folder": (["folds", "--data", "{data}", "--out", "{data}"], "--out", "is a folder"),
    "zero workers (preprocess)": (["preprocess", "--data", "{data}", "--workers", "0"], "--workers", ">= 1, got 0"),
    "missing data folder": (["validate", "--data", "{tmp}/nowhere"], "--data", "nowhere: folder not found"),
    "data is a file": (["prior", "--data", "{data}/train.csv"], "--data", "train.csv: not a folder"),
    "missing submission": (["score", "--data", "{data}", "--submission", "{tmp}/none.csv"], "--submission",
                           "none.csv: file not found"),
    "submission is a folder": (["score", "--data", "{data}", "--submission", "{data}"], "--submission",
                               "data: not a file"),
    "missing folds file": (["prior", "--data", "{data}", "--folds", "{tmp}/f.csv"], "--folds", "f.csv: file not found"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_argument_is_refused_naming_it(case, data, tmp_path, capsys):
    argv, argument, problem = BAD_ARGUMENTS[case]
    code, out, err = run(capsys, *(a.format(tmp=tmp_path, data=data) for a in argv))
    assert code == 2
    line = error_line(err)
    assert line.startswith(f"rsna2024 {argv[0]}: error: argument {argument}: ") and problem in line, line
    assert out == "" and not (tmp_path / "out").exists() and not (data / "folds.csv").exists()


# --------------------------------------------------------------------------- unreadable CSV files
def _latin1(text: str) -> bytes:
    return (text.splitlines()[0] + "\n" + "café,1\n").encode("latin-1")


# name -> (what to write in place of the file, given its UTF-8 text; the problem the message names)
BAD_FILES = {
    "empty": (lambda text: b"", "the file is empty"),
    "blank lines only": (lambda text: b"\n  \n\n", "the file is empty"),
    "binary": (lambda text: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "holds binary data"),
    "UTF-16 without a byte-order mark": (lambda text: text.encode("utf-16-le"), "holds binary data"),
    "Latin-1": (_latin1, "not UTF-8 text"),
    "a folder in its place": (None, "is a folder"),
}
# which file, read by which command
FILE_ROLES = {
    "train.csv": (["prior", "--data", "{data}"], "{data}/train.csv"),
    "train_series_descriptions.csv": (["preprocess", "--data", "{data}", "--cache", "{tmp}/cache"],
                                      "{data}/train_series_descriptions.csv"),
    "submission": (["score", "--data", "{data}", "--submission", "{tmp}/sub.csv"], "{tmp}/sub.csv"),
    "folds.csv": (["prior", "--data", "{data}", "--folds", "{tmp}/folds.csv"], "{tmp}/folds.csv"),
}


def _spoil(path: Path, kind: str) -> None:
    make, _ = BAD_FILES[kind]
    if make is None:
        path.unlink()
        path.mkdir()
    else:
        path.write_bytes(make(path.read_text()))


# (a folder in place of a file given as an argument is refused by the argument's type, tested above)
FILE_CASES = [(kind, role) for kind in sorted(BAD_FILES) for role in sorted(FILE_ROLES)
              if not (kind == "a folder in its place" and role in ("submission", "folds.csv"))]


@pytest.mark.parametrize("kind, role", FILE_CASES)
def test_unreadable_csv_is_named(kind, role, data, tmp_path, capsys):
    argv, file = FILE_ROLES[role]
    path = Path(file.format(tmp=tmp_path, data=data))
    constant_submission(data).to_csv(tmp_path / "sub.csv", index=False)
    assert run(capsys, "folds", "--data", data, "--out", tmp_path / "folds.csv")[0] == 0
    _spoil(path, kind)
    code, out, err = run(capsys, *(a.format(tmp=tmp_path, data=data) for a in argv))
    assert code == 2
    line = error_line(err)
    assert line.startswith(f"rsna2024 {argv[0]}: error: {path}: {BAD_FILES[kind][1]}"), line
    assert "total" not in out and not list(tmp_path.glob("cache/**/index.csv"))


def test_validate_reports_an_unreadable_file_and_checks_the_others(data, capsys):
    _spoil(data / "train.csv", "binary")
    code, out, err = run(capsys, "validate", "--data", data)
    assert code == 1 and "Traceback" not in err
    assert f"{data / 'train.csv'}: holds binary data" in out and "result: FAILED" in out
    # the other files were read and summarised
    assert "series: 30 in 10 studies" in out and "coordinates: 250 points on 30 series" in out
    assert "test series: 3 in 1 studies" in out


def test_a_submission_with_a_header_only_is_an_error(data, tmp_path, capsys):
    (tmp_path / "sub.csv").write_text("row_id,normal_mild,moderate,severe\n")
    code, out, err = run(capsys, "score", "--data", data, "--submission", tmp_path / "sub.csv")
    assert code == 2 and error_line(err) == (f"rsna2024 score: error: {tmp_path / 'sub.csv'}: holds a header but no "
                                             f"rows; expected one row per row_id")


@pytest.mark.parametrize("bom", ["utf-16-le", "utf-16-be", "utf-8"])
def test_csv_with_a_byte_order_mark_is_decoded(bom, data, tmp_path, capsys):
    """UTF-16 (as spreadsheet programs' "Unicode text" export writes it) and UTF-8 with a BOM read like UTF-8."""
    marks = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff", "utf-8": b"\xef\xbb\xbf"}
    constant_submission(data, studies=4).to_csv(tmp_path / "sub.csv", index=False)
    for path in (data / "train.csv", tmp_path / "sub.csv"):
        path.write_bytes(marks[bom] + path.read_text().encode(bom))
    code, out, err = run(capsys, "score", "--data", data, "--submission", tmp_path / "sub.csv")
    assert code == 0, err
    assert "scored 100 of 250 labelled rows; 150 labelled rows have no prediction" in out


# --------------------------------------------------------------------------- permissions
@contextlib.contextmanager
def unprivileged():
    """Run the block without root's right to read and write through any permission bits: as root, with the
    effective user and group ``nobody`` (65534); as anyone else, as is."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def open_tmp():
    """A temporary folder every user can write into (pytest's own is private to its user)."""
    path = Path(tempfile.mkdtemp(prefix="rsna2024-perm-"))
    path.chmod(0o777)
    yield path
    for sub in [path, *path.rglob("*")]:
        if sub.is_dir():
            sub.chmod(0o755)
    shutil.rmtree(path)


def test_unreadable_labels_file_is_named(open_tmp, capsys):
    data = write_folder(open_tmp / "data", n_studies=10)
    (data / "train.csv").chmod(0o000)
    with unprivileged():
        code, out, err = run(capsys, "prior", "--data", data)
    assert code == 2
    assert error_line(err) == f"rsna2024 prior: error: {data / 'train.csv'}: cannot be read (permission denied)"


def test_unreadable_submission_is_named(open_tmp, capsys):
    data = write_folder(open_tmp / "data", n_studies=10)
    constant_submission(data).to_csv(open_tmp / "sub.csv", index=False)
    (open_tmp / "sub.csv").chmod(0o000)
    with unprivileged():
        code, out, err = run(capsys, "score", "--data", data, "--submission", open_tmp / "sub.csv")
    assert code == 2
    assert error_line(err) == f"rsna2024 score: error: {open_tmp / 'sub.csv'}: cannot be read (permission denied)"


@pytest.mark.parametrize("argv, argument", [
    (["synth", "--out", "{ro}/phantom"], "--out"),
    (["synth", "--out", "{tmp}/phantom", "--preview", "{ro}/preview.png"], "--preview"),
    (["folds", "--data", "{data}", "--out", "{ro}/folds.csv"], "--out"),
    (["preprocess", "--data", "{data}", "--cache", "{ro}/cache"], "--cache"),
])
def test_read_only_output_folder_is_refused_before_any_work(argv, argument, open_tmp, capsys):
    data = write_folder(open_tmp / "data", n_studies=10)
    ro = open_tmp / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    with unprivileged():
        code, out, err = run(capsys, *(a.format(ro=ro, tmp=open_tmp, data=data) for a in argv))
    line = error_line(err)
    assert code == 2 and line.startswith(f"rsna2024 {argv[0]}: error: argument {argument}: {ro}/"), line
    assert line.endswith(f"cannot be written ({ro}: permission denied)"), line
    assert not (open_tmp / "phantom").exists() and list(ro.iterdir()) == []


def test_folds_in_a_read_only_data_folder_names_the_file(open_tmp, capsys):
    """The default output, <data>/folds.csv, is found unwritable when it is written; nothing is left behind."""
    data = write_folder(open_tmp / "data", n_studies=10)
    before = sorted(p.name for p in data.iterdir())
    data.chmod(0o555)
    with unprivileged():
        code, out, err = run(capsys, "folds", "--data", data)
    assert code == 2
    assert error_line(err) == f"rsna2024 folds: error: {data / 'folds.csv'}: cannot be written (permission denied)"
    assert sorted(p.name for p in data.iterdir()) == before


# --------------------------------------------------------------------------- --debug, bugs, Ctrl-C
@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_before_the_one_line_message(where, data, capsys):
    _spoil(data / "train.csv", "empty")
    argv = ["prior", "--data", data]
    code, _, err = run(capsys, *(["--debug", *argv] if where == "before" else [*argv, "--debug"]))
    assert code == 2
    assert "Traceback (most recent call last)" in err and "rsna2024.errors.DataError" in err
    assert err.strip().splitlines()[-1] == f"rsna2024 prior: error: {data / 'train.csv'}: the file is empty; " \
                                           f"expected a CSV file with columns study_id, spinal_canal_stenosis_l1_l2, " \
                                           f"spinal_canal_stenosis_l2_l3, spinal_canal_stenosis_l3_l4 (and 22 more)"


def test_an_unexpected_error_is_one_line_with_exit_1(capsys):
    def buggy():
        return {}["missing key"]

    assert run_guarded("rsna2024 x", buggy) == 1
    err = capsys.readouterr().err
    assert err == "rsna2024 x: unexpected error: KeyError: 'missing key' (rerun with --debug for the traceback)\n"
    assert run_guarded("rsna2024 x", buggy, debug=True) == 1
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_ends_synth_with_exit_130_and_one_line(tmp_path):
    out = tmp_path / "phantom"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # SIGINT back to its default in the child (a shell's background job would ignore it, and so would the child)
    proc = subprocess.Popen([sys.executable, "-m", "rsna2024.cli", "synth", "--out", str(out), "--studies", "1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (out / "train_images").is_dir() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "synth ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "rsna2024 synth: interrupted"
    assert not (out / "train.csv").exists()  # an interrupted run leaves no finished-looking dataset
