"""Atomic writes leave no partial file; finished outputs are not overwritten silently."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import dead_pid, stale_temporary

from rsna2024.errors import OutputError
from rsna2024.utils.io import (
    TEMP_PATTERN,
    atomic_path,
    atomic_to_csv,
    atomic_write_text,
    check_overwrite,
    check_writable_dir,
    clean_stale_temporaries,
    temporary_folder,
    text_encoding,
)


def test_atomic_path_keeps_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("finished")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "finished"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"], "temporary file left behind"


def test_atomic_writers_create_parents_and_replace(tmp_path):
    target = tmp_path / "a" / "b.csv"
    atomic_to_csv(pd.DataFrame({"study_id": [1, 2], "fold": [0, 1]}), target)
    assert pd.read_csv(target)["fold"].tolist() == [0, 1]
    atomic_write_text(target, "x\n")
    assert target.read_text() == "x\n"


def test_the_temporary_names_its_host_and_pid(tmp_path):
    with atomic_path(tmp_path / "oof.csv") as tmp:
        match = TEMP_PATTERN.match(tmp.name)
        assert tmp.parent == tmp_path and match and match["name"] == "oof.csv" and int(match["pid"]) == os.getpid()


def test_stale_temporaries_go_and_live_writers_keep_theirs(tmp_path):
    sub = tmp_path / "fold" / "deep"
    sub.mkdir(parents=True)
    gone = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [stale_temporary(tmp_path, "oof.csv", gone), stale_temporary(sub, "fold0_last.pt", gone),
                 stale_temporary(tmp_path, "x.npy", os.getpid())]  # this pid, before this process: a reused pid
        kept = [stale_temporary(tmp_path, "coords.csv", live.pid),  # a concurrent job (--gpus fold, torchrun rank)
                stale_temporary(tmp_path, "mine.csv", os.getpid(), age_s=-5),  # this process is writing it
                stale_temporary(tmp_path, "new.csv", gone, age_s=-5)]  # made after this process started
        other_host = tmp_path / stale[0].name.replace(".abcd1234.", ".wxyz9876.").replace(
            TEMP_PATTERN.match(stale[0].name)["host"], "elsewhere")
        other_host.write_bytes(b"shared file system")
        for name in (".oof.csv.abcd1234.tmp", "notes.tmp", "oof.csv", ".hidden"):  # not the writers' pattern
            (tmp_path / name).write_text("x")
            kept.append(tmp_path / name)
        kept.append(other_host)
        assert clean_stale_temporaries(sub.parent, recursive=False) == []
        assert sorted(clean_stale_temporaries(tmp_path)) == sorted(stale)
    finally:
        live.kill()
        live.wait()
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    assert clean_stale_temporaries(tmp_path / "absent") == []


def test_temporary_folders_go_when_done_and_a_killed_writers_go_at_the_next_clean(tmp_path):
    with pytest.raises(RuntimeError), temporary_folder(tmp_path, "package") as tmp:
        (tmp / "dataset").mkdir()
        (tmp / "dataset" / "weights.pt").write_bytes(b"x")
        assert TEMP_PATTERN.match(tmp.name) and tmp.parent == tmp_path
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    # what a killed packaging left: its folder, with content, from a pid that is gone
    stale = stale_temporary(tmp_path, "package", dead_pid())
    stale.unlink()
    stale.mkdir()
    (stale / "dataset").mkdir()
    (stale / "dataset" / "weights.pt").write_bytes(b"half")
    os.utime(stale, (stale.stat().st_atime - 3600, stale.stat().st_mtime - 3600))
    with temporary_folder(tmp_path, "package") as mine:  # this process's own, in use: kept
        assert clean_stale_temporaries(tmp_path, recursive=False) == [stale]
        assert mine.is_dir() and not stale.exists()


def test_check_overwrite_names_the_file(tmp_path):
    target = tmp_path / "submission.csv"
    check_overwrite(target, overwrite=False)  # absent: fine
    target.write_text("row_id\n")
    with pytest.raises(FileExistsError, match="submission.csv"):
        check_overwrite(target, overwrite=False)
    check_overwrite(target, overwrite=True)


def test_atomic_path_names_the_target_when_its_folder_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"/file/out.csv: cannot be written \(.*/file is not a folder\)$"):
        atomic_write_text(tmp_path / "file" / "out.csv", "y")


def test_check_writable_dir_accepts_a_folder_to_be_created_and_leaves_nothing(tmp_path):
    assert check_writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert check_writable_dir(tmp_path) == tmp_path
    assert list(tmp_path.iterdir()) == []  # no probe file, no folder created


def test_check_writable_dir_refuses_a_file_in_the_way_naming_it(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"out/x: cannot be written \(.*/f is not a folder\)"):
        check_writable_dir(tmp_path / "f" / "sub", name="out/x")


@pytest.mark.parametrize("head, encoding", [
    (b"study_id,fold\n", "utf-8-sig"),
    (b"\xef\xbb\xbfstudy_id", "utf-8-sig"),
    ("study_id".encode("utf-16"), "utf-16"),  # with the platform's byte-order mark
    (b"\xfe\xff" + "study_id".encode("utf-16-be"), "utf-16"),
    ("study_id".encode("utf-16-le"), None),  # no mark: NUL bytes, taken as binary
    (b"\x89PNG\r\n\x1a\n\x00\x00", None),
])
def test_text_encoding_reads_byte_order_marks_and_spots_binary(head, encoding):
    assert text_encoding(head) == encoding
