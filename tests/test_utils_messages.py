"""Message helpers: example lists with counts, and one-line descriptions of exceptions."""
from __future__ import annotations

import errno

from rsna2024.errors import DataError
from rsna2024.utils.messages import count_and_examples, describe_exception, describe_items


def test_describe_items_lists_a_few_and_counts_the_rest():
    assert describe_items([]) == ""
    assert describe_items([3, 1, 2]) == "3, 1, 2"
    assert describe_items(range(12)) == "0, 1, 2, 3, 4 (and 7 more)"
    assert describe_items("abcd", show=2) == "a, b (and 2 more)"


def test_count_and_examples():
    assert count_and_examples("studies without a Sagittal T1 series", [7, 9]) == \
        "studies without a Sagittal T1 series (2): 7, 9"
    assert count_and_examples("rows", range(8), show=3) == "rows (8): 0, 1, 2 (and 5 more)"


def test_describe_exception_gives_one_line():
    assert describe_exception(PermissionError(errno.EACCES, "Permission denied", "/x/a.csv")) == \
        "/x/a.csv: permission denied"
    assert describe_exception(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")) == \
        "/a -> /b: invalid cross-device link"
    assert describe_exception(DataError("train.csv: bad\n  value")) == "train.csv: bad value"
    assert describe_exception(KeyboardInterrupt()) == "KeyboardInterrupt"
