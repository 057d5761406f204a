"""The run folder cannot be planted: issue 10, defect 12 (a planted ``.pth`` ran as the server).

``detstack serve`` used ``/tmp/detstack-serve-<time>-<pid>`` and accepted it when it existed, so a
folder made in advance with ``python-env/lib/pythonX.Y/site-packages/evil.pth`` had its code run
by the python backend's interpreter.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

import pytest

from detstack.errors import ServeError
from serve import ServeConfig, TritonServer
from serve._cli import _build_config, register
from serve._run_dir import new_launch_dir, new_run_dir, open_log, private_run_dir
from tests.fixtures.triton import write_echo_repository

_SITE = f"python{sys.version_info.major}.{sys.version_info.minor}"


def _plant(run_dir: Path, marker: Path) -> None:
    """A folder laid out like the old launch files, with a .pth that writes ``marker``."""
    site_packages = run_dir / "python-env" / "lib" / _SITE / "site-packages"
    site_packages.mkdir(parents=True)
    (site_packages / "evil.pth").write_text(
        f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n", encoding="utf-8"
    )
    (run_dir / "backends" / "python").mkdir(parents=True)
    run_dir.chmod(0o700)


def _config(tmp_path: Path, run_dir: Path) -> ServeConfig:
    repository = write_echo_repository(tmp_path / "repository")
    return ServeConfig(str(repository), http_port=0, grpc_port=0, metrics_port=0, run_dir=run_dir)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777], ids=["world", "group", "sticky-world"])
def test_a_run_dir_writable_by_group_or_others_is_refused_before_anything_runs(tmp_path, mode):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(mode)
    with pytest.raises(ServeError, match=rf"refusing run folder {run_dir}: group or others"):
        TritonServer(_config(tmp_path, run_dir)).start()
    assert list(run_dir.iterdir()) == []  # nothing written, nothing launched


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_run_dir_owned_by_another_user_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, 65534, 65534)
    with pytest.raises(ServeError, match=r"owned by uid 65534, not by you"):
        private_run_dir(run_dir)


def test_a_run_dir_that_is_a_file_or_sits_in_a_world_writable_non_sticky_folder_is_refused(
    tmp_path,
):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ServeError, match="not a directory"):
        private_run_dir(tmp_path / "file")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "run").mkdir(mode=0o700)
    with pytest.raises(ServeError, match="world-writable without the sticky bit"):
        private_run_dir(shared / "run")


def test_a_missing_run_dir_is_created_private(tmp_path):
    run_dir = private_run_dir(tmp_path / "a" / "run")
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700


def test_folders_we_make_have_random_names_and_mode_0700(tmp_path):
    first, second = new_run_dir(), new_run_dir()
    try:
        assert first != second
        for folder in (first, second, new_launch_dir(first)):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    finally:
        for folder in (first, second):
            for path in sorted(folder.rglob("*"), reverse=True):
                path.rmdir()
            folder.rmdir()


def test_the_cli_no_longer_picks_a_predictable_run_dir():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--repository", "repo"])
    assert _build_config(args).run_dir is None  # made by mkdtemp when serving starts


def test_a_log_planted_as_a_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "tritonserver.log").symlink_to(victim)
    with pytest.raises(ServeError, match="symbolic link"):
        open_log(tmp_path / "tritonserver.log")
    assert victim.read_text() == "keep"


@pytest.mark.triton
@pytest.mark.slow
def test_a_pth_planted_in_the_run_dir_is_never_executed(tmp_path):
    run_dir = tmp_path / "run"
    marker = tmp_path / "planted-code-ran"
    _plant(run_dir, marker)
    server = TritonServer(_config(tmp_path, run_dir)).start()
    try:
        assert server.models  # the python backend started and loaded the model
        (launch,) = run_dir.glob("launch-*")
        assert stat.S_IMODE(launch.stat().st_mode) == 0o700
        (pth,) = launch.rglob("*.pth")
        assert pth.name == "detstack-environment.pth"
    finally:
        server.stop()
    assert not marker.exists()
    assert not list(run_dir.glob("launch-*"))  # launch files are removed at stop
