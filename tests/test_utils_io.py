"""Atomic writes leave no partial file; finished outputs are not overwritten silently."""
from __future__ import annotations

import pandas as pd
import pytest

from rsna2024.utils.io import atomic_path, atomic_to_csv, atomic_write_text, check_overwrite


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


def test_check_overwrite_names_the_file(tmp_path):
    target = tmp_path / "submission.csv"
    check_overwrite(target, overwrite=False)  # absent: fine
    target.write_text("row_id\n")
    with pytest.raises(FileExistsError, match="submission.csv"):
        check_overwrite(target, overwrite=False)
    check_overwrite(target, overwrite=True)
