"""The run folder's own files: metrics lines, the history a resume keeps, best.pt, the config."""

from __future__ import annotations

import json
import os

from training._run_files import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    append_metrics,
    link_best,
    read_history,
    write_config,
)


def test_resume_keeps_the_metrics_up_to_its_checkpoint_and_rewrites_the_file_without_the_rest(
    tmp_path,
):
    path = tmp_path / METRICS_FILE
    for epoch in (1, 2, 3):
        append_metrics(path, {"epoch": epoch, "train": {"loss": 1.0 / epoch}})
    kept = read_history(path, up_to_epoch=2)
    assert [r["epoch"] for r in kept] == [1, 2]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE]


def test_a_run_without_metrics_has_an_empty_history_and_no_file_is_created(tmp_path):
    assert read_history(tmp_path / METRICS_FILE, up_to_epoch=3) == []
    assert list(tmp_path.iterdir()) == []


def test_best_becomes_the_same_file_as_last_and_follows_a_later_best(tmp_path):
    last, best = tmp_path / LAST_CHECKPOINT, tmp_path / BEST_CHECKPOINT
    last.write_bytes(b"epoch 1")
    link_best(last, best)
    assert os.path.samefile(last, best)
    last.unlink()
    last.write_bytes(b"epoch 2")  # save_checkpoint replaces last.pt with a new file
    assert best.read_bytes() == b"epoch 1"
    link_best(last, best)
    assert best.read_bytes() == b"epoch 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST_CHECKPOINT, LAST_CHECKPOINT]


def test_the_config_file_is_indented_json_with_a_final_newline(tmp_path):
    write_config(tmp_path, {"epochs": 2, "lr_steps": []})
    text = (tmp_path / CONFIG_FILE).read_text(encoding="utf-8")
    assert text == json.dumps({"epochs": 2, "lr_steps": []}, indent=2) + "\n"
