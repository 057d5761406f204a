"""The one atomic writer: whole new content or the old file, no temporary left, a known mode."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from detstack.atomic import (
    atomic_replace_with_link,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_writer,
    current_umask,
)


@pytest.fixture
def umask() -> Iterator[Callable]:
    """Set the process umask for one test; the previous one comes back afterwards."""
    previous = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(previous)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bytes_replace_the_previous_content_and_leave_only_the_target(tmp_path):
    path = tmp_path / "data.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert _names(tmp_path) == ["data.bin"]


def test_a_writer_failing_mid_way_leaves_the_previous_file_untouched_and_no_temporary(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"the good checkpoint")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_writer(path) as stream:
        stream.write(b"half of the new")
        stream.flush()
        raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"the good checkpoint"
    assert _names(tmp_path) == ["last.pt"]


def test_a_failed_first_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(ValueError), atomic_writer(tmp_path / "new.json") as stream:
        stream.write(b"{")
        raise ValueError("not serialisable")
    assert _names(tmp_path) == []


def test_an_interrupt_mid_way_also_removes_the_temporary(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_writer(path) as stream:
        stream.write(b"new")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["x"]


def test_a_failing_rename_removes_the_temporary_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.pbtxt"
    path.write_bytes(b"old")

    def refuse(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["config.pbtxt"]


def test_the_content_is_invisible_under_the_target_name_until_the_block_ends(tmp_path):
    path = tmp_path / "run.json"
    path.write_bytes(b"old")
    with atomic_writer(path) as stream:
        stream.write(b"new")
        stream.flush()
        assert path.read_bytes() == b"old"
        (temporary,) = [p for p in tmp_path.iterdir() if p.name != "run.json"]
        assert temporary.name.startswith(".run.json.") and temporary.name.endswith(".tmp")
    assert path.read_bytes() == b"new"


def test_the_temporary_file_takes_the_given_prefix_so_a_sweeper_can_find_it(tmp_path):
    with atomic_writer(tmp_path / "gpu.pbtxt", prefix=".export-gpu.pbtxt.") as stream:
        stream.write(b"x")
        assert [p.name.startswith(".export-gpu.pbtxt.") for p in tmp_path.iterdir()] == [True]
    assert _names(tmp_path) == ["gpu.pbtxt"]


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_file_mode_follows_the_umask_as_open_would_not_mkstemps_0600(
    tmp_path, umask, mask, expected
):
    umask(mask)
    path = tmp_path / "c.pt"
    atomic_write_bytes(path, b"x")
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    assert _mode(path) == expected == _mode(plain)


def test_an_explicit_mode_is_set_exactly_whatever_the_umask(tmp_path, umask):
    umask(0o077)
    path = tmp_path / "config.pbtxt"
    atomic_write_bytes(path, b"x", mode=0o644)
    assert _mode(path) == 0o644


def test_replacing_a_file_gives_it_the_new_mode_not_the_old_one(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "x"
    path.write_bytes(b"old")
    path.chmod(0o600)
    atomic_write_bytes(path, b"new")
    assert _mode(path) == 0o644


def test_current_umask_reads_the_mask_without_changing_it(umask):
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027


def test_text_is_utf8_whatever_the_locale(tmp_path):
    path = tmp_path / "label.txt"
    atomic_write_text(path, "Ω café\n")
    assert path.read_bytes() == "Ω café\n".encode()


def test_json_ends_with_a_newline_and_is_one_compact_line_without_indent(tmp_path):
    path = tmp_path / "cache.json"
    atomic_write_json(path, {"b": [1, 2], "a": None}, indent=None)
    assert path.read_text(encoding="utf-8") == '{"b":[1,2],"a":null}\n'
    atomic_write_json(path, {"b": 1, "a": Path("/x")}, indent=1, sort_keys=True, default=str)
    assert path.read_text(encoding="utf-8") == '{\n "a": "/x",\n "b": 1\n}\n'


def test_json_that_cannot_be_encoded_leaves_the_previous_file(tmp_path):
    path = tmp_path / "run.json"
    atomic_write_json(path, {"status": "running"})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"status": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"status": "running"}
    assert _names(tmp_path) == ["run.json"]


def test_a_missing_directory_is_an_error_not_created(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "missing" / "x", b"x")
    assert _names(tmp_path) == []


def test_link_makes_the_target_the_same_file_as_the_source(tmp_path):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    atomic_write_bytes(last, b"epoch 3")
    best.write_bytes(b"epoch 1")
    atomic_replace_with_link(last, best)
    assert best.read_bytes() == b"epoch 3"
    assert os.path.samefile(last, best)
    assert _names(tmp_path) == ["best.pt", "last.pt"]


def test_link_copies_where_hard_links_are_impossible(tmp_path, monkeypatch):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    atomic_write_bytes(last, b"epoch 3")

    def no_links(source, target):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    atomic_replace_with_link(last, best)
    assert best.read_bytes() == b"epoch 3"
    assert not os.path.samefile(last, best)
    assert _names(tmp_path) == ["best.pt", "last.pt"]


def test_link_from_a_missing_source_leaves_the_target_untouched(tmp_path):
    best = tmp_path / "best.pt"
    best.write_bytes(b"epoch 1")
    with pytest.raises(FileNotFoundError):
        atomic_replace_with_link(tmp_path / "last.pt", best)
    assert best.read_bytes() == b"epoch 1"
    assert _names(tmp_path) == ["best.pt"]
