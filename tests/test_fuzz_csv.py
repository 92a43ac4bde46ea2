"""Fuzzed CSV files: a submission, ``train.csv`` and ``train_series_descriptions.csv`` mutated at random (columns
dropped, renamed, reordered, added twice; cells set to NaN, negative, > 1, garbage; rows duplicated, deleted,
shuffled, made ragged; row ids malformed or unknown; other encodings and line ends; empty, cut or garbage files)
go through ``rsna2024 score`` and ``rsna2024 validate``.

A small model written here reads the file's bytes (encoding rules, the csv module) and each file's contract, and
says whether the file is valid and, if not, what a message may name. A valid file gives exit 0 and exactly the
score (or summary) of the table the model read; an invalid one exit 2 for ``score`` (1 for ``validate``, which
reports problems) with one error line naming the file and the column, row id or encoding at fault; never an
exit 1 of ``score`` (an unexpected error) or a traceback.
"""
from __future__ import annotations

import codecs
import csv
import io
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fuzz_helpers import error_line, fuzz_case, fuzz_settings, run_cli
from hypothesis import event, example, given
from hypothesis import strategies as st
from kaggle_folder import make_tables, write_folder

from rsna2024.constants import LABELS, SERIES_COLUMNS, SERIES_TYPES, SUBMISSION_COLUMNS, TARGET_COLUMNS
from rsna2024.data.contract import labels_long
from rsna2024.metric import format_scores, score_labelled_rows

CSV_EXAMPLES = 40
N_STUDIES = 3
# Cell texts pandas reads as missing (a subset of its default NA strings)
NA_TEXTS = ("", "NA", "N/A", "nan", "NaN", "None", "null")
NUMBER = re.compile(r"^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$")
ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1", "cp1252")


# ----------------------------------------------------------------------------------- tables and their mutations
@dataclass
class Table:
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)

    @classmethod
    def of(cls, df: pd.DataFrame) -> Table:
        rows = [["" if pd.isna(v) else str(v) for v in row] for row in df.itertuples(index=False)]
        return cls(list(df.columns), rows)

    def column(self, name: str) -> int | None:
        """Index of the first column called ``name`` (pandas renames later ones ``name.1``...)."""
        return self.header.index(name) if name in self.header else None

    def cells(self, name: str) -> list[str]:
        k = self.column(name)
        return [row[k] if k < len(row) else "" for row in self.rows]


@dataclass(frozen=True)
class Mutation:
    """One change to a table; ``index`` picks a row or column (modulo their number)."""

    index: int

    def apply(self, t: Table) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class SetCell(Mutation):
    column: int = 0
    text: str = ""

    def apply(self, t: Table) -> None:
        if t.rows and t.header:
            row = t.rows[self.index % len(t.rows)]
            row[self.column % len(row)] = self.text


@dataclass(frozen=True)
class SetColumn(Mutation):
    """Every cell of a column set to ``text``."""

    text: str = ""

    def apply(self, t: Table) -> None:
        for row in t.rows:
            row[self.index % len(row)] = self.text


@dataclass(frozen=True)
class RowOp(Mutation):
    op: str = "duplicate"  # duplicate, delete, ragged_short, ragged_long, shuffle

    def apply(self, t: Table) -> None:
        if not t.rows:
            return
        i = self.index % len(t.rows)
        if self.op == "duplicate":
            t.rows.insert(i, list(t.rows[i]))
        elif self.op == "delete":
            del t.rows[i]
        elif self.op == "ragged_short":
            t.rows[i] = t.rows[i][:-1]
        elif self.op == "ragged_long":
            t.rows[i] = t.rows[i] + ["0.1"]
        else:
            order = np.random.default_rng(self.index).permutation(len(t.rows))
            t.rows[:] = [t.rows[k] for k in order]


@dataclass(frozen=True)
class ColumnOp(Mutation):
    op: str = "drop"  # drop, rename, reorder, add
    name: str = ""

    def apply(self, t: Table) -> None:
        k = self.index % len(t.header)
        if self.op == "drop":
            del t.header[k]
            for row in t.rows:
                del row[k:k + 1]
        elif self.op == "rename":
            t.header[k] = self.name
        elif self.op == "add":
            t.header.append(self.name)
            for row in t.rows:
                row.append("0.5")
        else:
            order = np.random.default_rng(self.index).permutation(len(t.header))
            t.header[:] = [t.header[j] for j in order]
            for row in t.rows:
                row[:] = [row[j] if j < len(row) else "" for j in order][:len(row)]


@dataclass(frozen=True)
class Damage:
    """What happens to the file's bytes after it is written: nothing, or it is emptied, cut, replaced or extended."""

    kind: str = "none"  # none, empty, blank, truncate, replace, append
    data: bytes = b""
    keep: float = 1.0

    def apply(self, raw: bytes) -> bytes:
        return {"none": raw, "empty": b"", "blank": b" \n\n", "truncate": raw[:int(len(raw) * self.keep)],
                "replace": self.data, "append": raw + self.data}[self.kind]


def serialize(t: Table, encoding: str, newline: str) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator=newline)
    writer.writerow(t.header)
    writer.writerows(t.rows)
    return text.getvalue().encode(encoding)


def table_mutations(columns: st.SearchStrategy[str], cells: st.SearchStrategy[str], valid_cells: st.SearchStrategy[str],
                    valid_columns: tuple[int, int]) -> st.SearchStrategy[list[Mutation]]:
    """Lists of up to 4 mutations: half of them from changes that tend to keep the file valid (``valid_cells`` in
    the columns ``valid_columns``, rows deleted or shuffled, columns reordered or an extra one added), half from
    any change."""
    index = st.integers(0, 200)
    keeping = st.one_of(
        st.builds(SetCell, index, st.integers(*valid_columns), valid_cells),
        st.builds(RowOp, index, st.sampled_from(["delete", "shuffle"])),
        st.builds(ColumnOp, index, st.just("reorder")), st.builds(ColumnOp, index, st.just("add"), st.just("extra")))
    anything = st.one_of(
        keeping,
        st.builds(SetCell, index, st.integers(0, 30), cells),
        st.builds(SetColumn, index, cells),
        st.builds(RowOp, index, st.sampled_from(["duplicate", "delete", "ragged_short", "ragged_long", "shuffle"])),
        st.builds(ColumnOp, index, st.sampled_from(["drop", "rename", "reorder", "add"]), columns),
    )
    return st.one_of(st.lists(keeping, max_size=4), st.lists(anything, max_size=4))


def damages() -> st.SearchStrategy[Damage]:
    intact = st.just(Damage())
    return st.one_of(intact, intact, intact, intact, intact, intact,
                     st.builds(Damage, st.sampled_from(["empty", "blank"])),
                     st.builds(Damage, st.just("truncate"), keep=st.floats(0.0, 0.999)),
                     st.builds(Damage, st.sampled_from(["replace", "append"]), st.binary(max_size=40)))


def write(path: Path, t: Table, encoding: str, newline: str, damage: Damage) -> Table:
    """Write the table (in UTF-8 when it holds characters ``encoding`` lacks); the table the file holds now (see
    :func:`read_model`, Invalid if none), which is ``t`` unless the file was damaged."""
    try:
        raw = serialize(t, encoding, newline)
    except UnicodeEncodeError:
        raw = serialize(t, "utf-8", newline)
    path.write_bytes(damage.apply(raw))
    held = read_model(path.read_bytes())
    if damage.kind == "none" and not any("\r" in c for c in t.header + sum(t.rows, [])):  # a bare CR ends a line
        assert (held.header, held.rows) == (t.header, [r for r in t.rows if r]), "the test's CSV model"
    return held


# ----------------------------------------------------------------------------------- the contract, modelled here
class Invalid(Exception):
    """The file breaks its contract; ``names`` are what a message may name: one of them must be in it."""

    def __init__(self, *names: str):
        super().__init__(names)
        self.names = names


def read_model(raw: bytes) -> Table:
    """The table a file's bytes hold as the contract reads them (UTF-8 with or without a byte-order mark, UTF-16
    with one; no NUL bytes; blank lines skipped), parsed here with the csv module; Invalid if unreadable."""
    if not raw.strip():
        raise Invalid("the file is empty")
    head = raw[:8192]
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif b"\0" in head:
        raise Invalid("binary data")
    else:
        encoding = "utf-8-sig"
    try:
        text = raw.decode(encoding)
        rows = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
    except UnicodeDecodeError:
        raise Invalid("not UTF-8 text", "not UTF-16 text") from None
    except csv.Error:
        raise Invalid("not a readable CSV file") from None
    if not rows:
        raise Invalid("the file is empty")
    return Table(rows[0], rows[1:])


class Problems:
    """The contract problems of one table, gathered (the kit may report any one of them)."""

    def __init__(self):
        self.names: list[str] = []

    def add(self, condition, *names: str) -> None:
        if condition:
            self.names += [str(n) for n in names]

    def check(self) -> None:
        if self.names:
            raise Invalid(*self.names)


def header_problems(t: Table, columns) -> None:
    """Missing or repeated required columns, rows longer than the header: Invalid, nothing more to check."""
    p = Problems()
    p.add(any(len(row) > len(t.header) for row in t.rows), "not a readable CSV file", "more fields than the header")
    p.add(True, *[c for c in columns if c not in t.header])
    p.add(True, *[c for c in columns if t.header.count(c) > 1])
    p.check()


def number(text: str) -> float | None:
    """The value pandas reads from a cell, or None when it is not a number."""
    return float(text) if NUMBER.match(text) else None


def integers(p: Problems, t: Table, column: str) -> list[int | None]:
    values = [number(v) for v in t.cells(column)]
    ok = [v is not None and np.isfinite(v) and v == int(v) for v in values]
    p.add(not all(ok), f"column {column!r} must hold integers")
    return [int(v) if good else None for v, good in zip(values, ok)]


def repeated(values) -> list:
    return sorted({v for v in values if values.count(v) > 1}, key=str)


def intended_submission(t: Table, row_ids: set[str]) -> pd.DataFrame:
    """The submission table ``t`` holds, or Invalid with every problem found."""
    header_problems(t, SUBMISSION_COLUMNS)
    p = Problems()
    p.add(not t.rows, "holds a header but no rows")
    ids = t.cells("row_id")
    p.add(True, *[r or "nan" for r in ids if r not in row_ids])
    p.add(True, *repeated(ids))
    values = {c: [number(v) for v in t.cells(c)] for c in SUBMISSION_COLUMNS[1:]}
    p.add(True, *[r for k, r in enumerate(ids) if any(v is None or not np.isfinite(v) or v < 0
                                                      for v in (values[c][k] for c in values))])
    p.check()
    return pd.DataFrame({"row_id": ids, **values})


def intended_labels(t: Table) -> pd.DataFrame:
    """The ``train.csv`` table ``t`` holds (study_id int, labels or NaN), or Invalid with every problem found."""
    header_problems(t, ("study_id", *TARGET_COLUMNS))
    p = Problems()
    studies = integers(p, t, "study_id")
    p.add(repeated(studies), "duplicate (study_id)")
    out = {"study_id": studies}
    for target in TARGET_COLUMNS:
        cells = t.cells(target)
        p.add(any(c not in LABELS and c not in NA_TEXTS for c in cells), f"unknown {target} value")
        out[target] = [c if c in LABELS else np.nan for c in cells]
    p.check()
    return pd.DataFrame(out)


def intended_descriptions(t: Table, labelled_series: set[tuple[int, int]]) -> pd.DataFrame:
    """``train_series_descriptions.csv`` as ``t`` holds it, or Invalid with every problem found (also a coordinate
    row of ``train_label_coordinates.csv`` pointing to a series it no longer describes)."""
    header_problems(t, SERIES_COLUMNS)
    p = Problems()
    ids = {column: integers(p, t, column) for column in ("study_id", "series_id")}
    p.add(any(d not in SERIES_TYPES for d in t.cells("series_description")), "unknown series_description value")
    pairs = list(zip(ids["study_id"], ids["series_id"]))
    p.add(repeated(pairs), "duplicate (study_id, series_id)")
    p.add(labelled_series - set(pairs), "does not describe")
    p.check()
    return pd.DataFrame({**ids, "series_description": t.cells("series_description")})


# ----------------------------------------------------------------------------------- strategies
VALID_PROBABILITY = st.one_of(st.floats(0, 3).map(repr),
                              st.sampled_from(["0", "1", "1e-3", " 0.25", "0.5 ", "1e-400", "-0", "+1", ".5", "2"]))
PROBABILITY = st.one_of(
    VALID_PROBABILITY,
    st.sampled_from(["nan", "-0.1", "-1e-9", "inf", "-inf", "1e999", "abc", "0,5", "True", "False", "1_0", "0x1",
                     " ", *NA_TEXTS]),
    st.text(max_size=8))
ROW_ID = st.one_of(
    st.sampled_from(["999_spinal_canal_stenosis_l1_l2", "1000_spinal_canal_stenosis_L1_L2", " 1000_spinal_canal_"
                     "stenosis_l1_l2", "1000_spinal_canal_stenosis", "1000", "_", "1000__l1_l2", *NA_TEXTS]),
    st.sampled_from([f"{s}_{t}" for s in (1000, 1001, 1002) for t in TARGET_COLUMNS[:5]]),
    st.text(max_size=12))
LABEL = st.one_of(st.sampled_from(LABELS), st.sampled_from(NA_TEXTS),
                  st.sampled_from(["normal", "Severe ", "MODERATE", "Normal/mild", "1", "mild"]), st.text(max_size=6))
STUDY = st.one_of(st.sampled_from(["1000", "1001", " 1002", "1003.0", "7", "1e3", "1.5", "-4", "abc", "0x10",
                                   *NA_TEXTS]), st.text(max_size=6))
SERIES_DESCRIPTION = st.one_of(st.sampled_from(SERIES_TYPES), st.sampled_from(["Sagittal T2", "axial t2", "", "T1"]),
                               st.text(max_size=10))


def column_names(names) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(names), st.sampled_from([f" {names[0]}", names[-1].upper(), "extra", ""]),
                     st.text(max_size=8))


@pytest.fixture(scope="module")
def base_csv(tmp_path_factory) -> tuple[Path, dict[str, pd.DataFrame]]:
    tables = make_tables(N_STUDIES, seed=3)
    train = tables["train.csv"]
    for k, target in enumerate(TARGET_COLUMNS[::4]):  # a few missing labels, as in the real data
        train.loc[k % N_STUDIES, target] = np.nan
    return write_folder(tmp_path_factory.mktemp("fuzz_csv") / "data", tables=tables), tables


def base_submission(labels: pd.DataFrame) -> pd.DataFrame:
    """A prediction for every row of ``labels``: probabilities drawn once (seeded), rows summing to 1."""
    long = labels_long(labels)
    p = np.random.default_rng(7).dirichlet([2.0, 1.0, 1.0], size=len(long))
    return pd.DataFrame({"row_id": long["row_id"], **{c: p[:, k] for k, c in enumerate(SUBMISSION_COLUMNS[1:])}})


def expect_score(out: str, long: pd.DataFrame, submission: pd.DataFrame, path: Path) -> None:
    scores, coverage = score_labelled_rows(long, submission, name=str(path))
    assert out == format_scores(scores, title=str(path)) + "\n" + coverage.format() + "\n", out


def expect_error(err: str, prog: str, path: Path, problem: Invalid | None) -> str:
    line = error_line(err, prog)
    assert str(path) in line, line
    if problem is not None:
        assert any(" ".join(name.split()) in line for name in problem.names), (problem.names, line)
    return line


# ----------------------------------------------------------------------------------- the tests
def mutate_and_write(path: Path, base: pd.DataFrame, mutations, encoding: str, newline: str, damage: Damage, model):
    """Write ``base`` mutated to ``path``: (the table ``model`` reads from the file's bytes, None) or (None,
    Invalid: the problems the kit may name)."""
    t = Table.of(base)
    for m in mutations:
        m.apply(t)
    try:
        return model(write(path, t, encoding, newline, damage)), None
    except Invalid as exc:
        return None, exc


def validate_problems(out: str) -> list[str]:
    """The problem lines of ``rsna2024 validate``'s report."""
    lines = out.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("problems found"))
    return [line[4:] for line in lines[start + 1:] if line.startswith("  - ")]


def expect_validate(data: Path, problem: Invalid | None, paths: tuple[Path, ...], summary: list[str]) -> None:
    """``validate`` passes with ``summary`` lines in its report, or fails (exit 1) naming one of ``paths`` and
    one of the problem's names; never a traceback or an unexpected error."""
    code, out, err = run_cli("validate", "--data", data)
    assert "Traceback" not in out + err and "unexpected error" not in err, out + err
    if problem is None:
        assert code == 0, out
        for line in summary:
            assert f"  {line}\n" in out, (line, out)
        return
    assert code == 1, (problem.names, out)
    problems = validate_problems(out)
    assert problems and all(str(data) in p for p in problems), out
    assert any(any(str(path) in p for path in paths) and any(" ".join(n.split()) in p for n in problem.names)
               for p in problems), (problem.names, problems)


ENCODING, NEWLINE = st.sampled_from(ENCODINGS), st.sampled_from(["\n", "\r\n"])


@fuzz_settings(CSV_EXAMPLES)
@given(mutations=table_mutations(column_names(SUBMISSION_COLUMNS), st.one_of(PROBABILITY, ROW_ID), VALID_PROBABILITY,
                                 (1, 3)),
       encoding=ENCODING, newline=NEWLINE, damage=damages())
# Regressions: the cases the fuzzing found (each scored, or refused for another reason, before its fix).
@example(mutations=[SetColumn(1, "True")], encoding="utf-8", newline="\n", damage=Damage())  # read as 1.0
@example(mutations=[ColumnOp(0, "add", "severe")], encoding="utf-8", newline="\n", damage=Damage())  # 2nd ignored
@example(mutations=[RowOp(0, "ragged_long")], encoding="utf-8", newline="\n", damage=Damage())  # columns shifted
@example(mutations=[SetCell(0, 0, "NA")], encoding="utf-8", newline="\n", damage=Damage())  # named "nan", not "NA"
def test_fuzzed_submission_is_scored_exactly_or_named(base_csv, mutations, encoding, newline, damage):
    data, tables = base_csv
    long = labels_long(tables["train.csv"])
    with fuzz_case("csv"), tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "submission.csv"
        intended, problem = mutate_and_write(path, base_submission(tables["train.csv"]), mutations, encoding, newline,
                                             damage, lambda t: intended_submission(t, set(long["row_id"])))
        code, out, err = run_cli("score", "--data", data, "--submission", path)
        event(f"score exit {code}")
        if problem is None:
            assert code == 0, err
            expect_score(out, long, intended, path)
        else:
            assert code == 2, (problem.names, out, err)
            expect_error(err, "rsna2024 score", path, problem)


def label_summary(labels: pd.DataFrame) -> list[str]:
    """The lines ``validate`` prints about ``train.csv``, counted here."""
    values = labels[list(TARGET_COLUMNS)].to_numpy().ravel()
    present = [v for v in values if isinstance(v, str)]
    counts = ", ".join(f"{lab} {present.count(lab)}" for lab in LABELS)
    missing_studies = int(labels[list(TARGET_COLUMNS)].isna().any(axis=1).sum())
    return [f"studies: {len(labels)} (train.csv)", f"labels: {len(present)} present ({counts})",
            f"missing labels: {len(values) - len(present)} in {missing_studies} studies"]


@fuzz_settings(CSV_EXAMPLES * 3 // 4)
@given(mutations=table_mutations(column_names(("study_id", *TARGET_COLUMNS)), st.one_of(LABEL, STUDY),
                                 st.sampled_from(LABELS + NA_TEXTS), (1, 25)),
       encoding=ENCODING, newline=NEWLINE, damage=damages())
def test_fuzzed_labels_are_validated_and_scored_exactly_or_named(base_csv, mutations, encoding, newline, damage):
    base, tables = base_csv
    with fuzz_case("csv"), tempfile.TemporaryDirectory() as tmp:
        data = Path(shutil.copytree(base, Path(tmp) / "data"))
        path = data / "train.csv"
        intended, problem = mutate_and_write(path, tables["train.csv"], mutations, encoding, newline, damage,
                                             intended_labels)
        expect_validate(data, problem, (path,), [] if intended is None else label_summary(intended))
        submission = Path(tmp) / "submission.csv"
        base_submission(tables["train.csv"]).to_csv(submission, index=False)
        code, out, err = run_cli("score", "--data", data, "--submission", submission)
        event(f"score exit {code}")
        if problem is not None:
            assert code == 2, (problem.names, out)
            expect_error(err, "rsna2024 score", path, problem)
            return
        long = labels_long(intended)
        if not set(labels_long(tables["train.csv"])["row_id"]) <= set(long["row_id"]):
            assert code == 2, out  # the labels lost studies the submission predicts
            expect_error(err, "rsna2024 score", submission, Invalid("row_id(s) not in"))
            return
        assert code == 0, err
        expect_score(out, long, pd.read_csv(submission, dtype={"row_id": str}), submission)


def description_summary(descriptions: pd.DataFrame) -> list[str]:
    counts = ", ".join(f"{t} {int((descriptions['series_description'] == t).sum())}" for t in SERIES_TYPES)
    return [f"series: {len(descriptions)} in {descriptions['study_id'].nunique()} studies ({counts})"]


@fuzz_settings(CSV_EXAMPLES // 2)
@given(mutations=table_mutations(column_names(SERIES_COLUMNS), st.one_of(SERIES_DESCRIPTION, STUDY),
                                 st.sampled_from(SERIES_TYPES), (2, 2)),
       encoding=ENCODING, newline=NEWLINE, damage=damages())
def test_fuzzed_series_descriptions_are_validated_or_named(base_csv, mutations, encoding, newline, damage):
    base, tables = base_csv
    coords = tables["train_label_coordinates.csv"]
    labelled = set(zip(coords["study_id"], coords["series_id"]))
    with fuzz_case("csv"), tempfile.TemporaryDirectory() as tmp:
        data = Path(shutil.copytree(base, Path(tmp) / "data"))
        path = data / "train_series_descriptions.csv"
        intended, problem = mutate_and_write(path, tables["train_series_descriptions.csv"], mutations, encoding,
                                             newline, damage, lambda t: intended_descriptions(t, labelled))
        event("valid" if problem is None else "invalid")
        expect_validate(data, problem, (path, data / "train_label_coordinates.csv"),
                        [] if intended is None else description_summary(intended))


def test_the_base_submission_scores(base_csv, tmp_path):
    """Sanity of the fuzz base: the unmutated submission scores every labelled row."""
    data, tables = base_csv
    path = tmp_path / "submission.csv"
    base_submission(tables["train.csv"]).to_csv(path, index=False)
    code, out, err = run_cli("score", "--data", data, "--submission", path)
    assert code == 0, err
    n = int(labels_long(tables["train.csv"])["label_index"].ge(0).sum())
    assert f"scored {n} of {n} labelled rows" in out
