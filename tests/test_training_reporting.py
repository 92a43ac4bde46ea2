"""metrics.jsonl shared by folds training at once into one run folder (``main.py --gpus``): a resumed fold's
truncation must not drop the lines another fold appends meanwhile."""
from __future__ import annotations

import multiprocessing as mp

from rsna2024.training.reporting import append_metrics, read_metrics, truncate_metrics

APPENDS = 400


def _append_fold_one(run_dir, ready):
    ready.set()
    for epoch in range(APPENDS):
        append_metrics(run_dir, {"fold": 1, "epoch": epoch, "train_loss": 0.5})


def test_truncating_one_fold_keeps_every_line_another_fold_appends_meanwhile(tmp_path):
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    writer = ctx.Process(target=_append_fold_one, args=(tmp_path, ready))
    writer.start()
    ready.wait(10)
    rewrites = 0
    while writer.is_alive() or rewrites < 20:
        # a fold-0 line past the resume point, so that every truncation rewrites the file
        append_metrics(tmp_path, {"fold": 0, "epoch": 3, "train_loss": 0.7})
        truncate_metrics(tmp_path, fold=0, before_epoch=3)
        rewrites += 1
    writer.join(30)
    assert writer.exitcode == 0 and rewrites >= 20
    assert [r["epoch"] for r in read_metrics(tmp_path, fold=1)] == list(range(APPENDS))
    assert read_metrics(tmp_path, fold=0) == []
