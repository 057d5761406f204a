"""An export killed with SIGKILL at any point leaves a consistent repository: issue 10, defect 14.

Before, an export killed between writing the configs and the final rename left configs naming a
version that did not exist (its label map, its warmup files). Here a forked child runs a real
:func:`write_version` and stops itself before its N-th file-system call (every ``mkdir``,
``rename``, ``replace``, ``unlink``, ``rmdir``, ``chmod``, ``fsync``, ``copyfile``); the parent
kills it with ``SIGKILL`` there, for N = 1, 2, ... until an export runs to the end, and checks
the repository after each kill. No seam in the library: the child wraps the ``os`` and
``shutil`` functions in its own copy of the process.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import select
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from detstack.errors import RepositoryError
from export.repository import MANIFEST_NAME, VersionContent, existing_versions, write_version
from export.samples import SampleImage
from export.triton_config import FLAVOURS, ConfigOptions, parse_pbtxt

NAME = "kill-model"
_PAUSED, _DONE = b"P", b"D"
#: Seconds a forked export child may take to reach its step (it dumps its stack and ends after).
_CHILD_LIMIT_S = 50

_WRAPPED_OS = ("mkdir", "rename", "replace", "unlink", "rmdir", "chmod", "fsync")


def _content(tmp_path: Path, tag: int) -> VersionContent:
    onnx = tmp_path / f"model-{tag}.onnx"
    onnx.write_bytes(b"not really onnx, the writer only copies it %d" % tag)
    rng = np.random.default_rng(tag)
    samples = [
        SampleImage(f"sample{i}.png", rng.integers(0, 255, (6, 8, 3), np.uint8), b"png%d" % i, "")
        for i in range(2)
    ]
    manifest = {"export": {"resize": {"min_size": 32 + tag, "max_size": 64 + tag}}}
    label_map = {tag: {"name": f"thing{tag}", "color": "#e6194b"}}
    return VersionContent(onnx, manifest, samples, label_map)


def _per_version_parameters(config) -> dict[str, set[int]]:
    """Config parameters that hold a JSON object keyed by version (label map, resizes, ...)."""
    found = {}
    for key, parameter in config.parameters.items():
        try:
            value = json.loads(parameter.string_value)
        except ValueError:
            continue
        if isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
            found[key] = {int(k) for k in value}
    return found


def check_invariants(model_dir: Path) -> list[int]:
    """Assert the repository is consistent; return its versions."""
    versions = existing_versions(model_dir)
    for version in versions:  # no partial version is visible
        assert (model_dir / str(version) / "model.onnx").is_file(), version
        assert (model_dir / str(version) / MANIFEST_NAME).is_file(), version
    numeric = [e.name for e in model_dir.iterdir() if e.name.isdigit()]
    assert sorted(map(int, numeric)) == versions
    configs = [
        model_dir / "config.pbtxt",
        *(model_dir / "configs" / f"{f}.pbtxt" for f in FLAVOURS),
    ]
    for path in configs:
        if not path.exists():
            continue
        config = parse_pbtxt(path.read_text(encoding="utf-8"))
        for key, named in _per_version_parameters(config).items():
            assert named <= set(versions), f"{path.name} {key} names {named}, exist: {versions}"
        for entry in config.model_warmup:
            for tensor in entry.inputs.values():
                assert (model_dir / "warmup" / tensor.input_data_file).is_file(), (
                    f"{path.name} warms up with missing {tensor.input_data_file}"
                )
    return versions


def _kill_at(step: int, export: Callable[[], object]) -> str:
    """Run ``export`` in a forked child stopped before its ``step``-th call; SIGKILL it there.

    A forked child of this multi-threaded pytest process can, rarely, hang on a lock another
    thread of the parent held at the moment of the fork (seen once in a full run: the child
    sat in a futex wait). Such a child prints its stack (faulthandler), is SIGKILLed where it
    hung, and counts as killed at that point, which is one more kill point for the invariants;
    the tests refuse more than a rare one.

    Returns:
        ``"finished"`` (the export ended before reaching ``step``), ``"killed"`` (at ``step``)
        or ``"stuck"`` (the child hung before reaching it and was killed there).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            # A child stuck on a lock another parent thread held at fork time says where, and
            # ends, instead of outliving the test with pytest's output pipe open.
            faulthandler.dump_traceback_later(_CHILD_LIMIT_S, exit=True)
            calls = [0]

            def wrap(function):
                def counted(*args, **kwargs):
                    calls[0] += 1
                    if calls[0] == step:
                        os.write(write_end, _PAUSED)
                        time.sleep(600)
                    return function(*args, **kwargs)

                return counted

            for name in _WRAPPED_OS:
                setattr(os, name, wrap(getattr(os, name)))
            shutil.copyfile = wrap(shutil.copyfile)
            export()
            os.write(write_end, _DONE)
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], _CHILD_LIMIT_S + 10)
        said = os.read(read_end, 1) if ready else b""
    finally:
        os.close(read_end)
    if said not in (_PAUSED, _DONE):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return "stuck"
    if said == _PAUSED:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if said == _PAUSED:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        return "killed"
    assert said == _DONE and os.WIFEXITED(status), f"child ended with status {status}"
    return "finished"


@pytest.fixture
def repository_with_one_version(tmp_path: Path) -> Path:
    repository = tmp_path / "template"
    write_version(repository, NAME, _content(tmp_path, 1), ConfigOptions())
    return repository


@pytest.mark.slow  # one fork, kill and two exports per step: ~45 steps
def test_an_export_killed_at_any_step_leaves_a_consistent_repository_that_the_next_repairs(
    repository_with_one_version, tmp_path
):
    second = _content(tmp_path, 2)
    third = _content(tmp_path, 3)
    step, kills, stuck = 0, 0, 0
    while True:
        step += 1
        assert step < 500, "the export never finished"
        repository = tmp_path / f"run-{step}"
        shutil.copytree(repository_with_one_version, repository)
        model_dir = repository / NAME

        outcome = _kill_at(
            step, lambda r=repository: write_version(r, NAME, second, ConfigOptions())
        )
        stuck += outcome == "stuck"
        assert stuck <= 1, f"forked export children hung {stuck} times (their stacks are above)"
        finished = outcome == "finished"

        versions = check_invariants(model_dir)
        assert versions in ([1], [1, 2]), (step, versions)
        written = write_version(repository, NAME, third, ConfigOptions())
        assert written.version == versions[-1] + 1, step
        assert check_invariants(model_dir) == [*versions, written.version]
        embedded = parse_pbtxt((model_dir / "configs" / "embedded.pbtxt").read_text())
        per_version = _per_version_parameters(embedded)
        assert per_version and all(
            v == set(versions) | {written.version} for v in per_version.values()
        )
        leftovers = [p for p in model_dir.rglob(".export-*")]
        assert leftovers == [], (step, leftovers)
        warmup = {entry.name for entry in (model_dir / "warmup").iterdir()}
        assert all(name.startswith(f"v{written.version}-") for name in warmup), (step, warmup)
        shutil.rmtree(repository)
        if finished:
            break
        kills += 1
    assert kills >= 20  # every file-system call of the export was a kill point


def test_a_stray_file_with_a_version_number_is_refused_by_name(
    repository_with_one_version, tmp_path
):
    model_dir = repository_with_one_version / NAME
    stray = model_dir / "2"
    stray.write_text("not a version")
    with pytest.raises(RepositoryError, match=rf"{stray} is not a directory") as caught:
        write_version(repository_with_one_version, NAME, _content(tmp_path, 2), ConfigOptions())
    assert "appeared" not in str(caught.value)
    assert existing_versions(model_dir) == [1]
    stray.unlink()
    assert (
        write_version(
            repository_with_one_version, NAME, _content(tmp_path, 2), ConfigOptions()
        ).version
        == 2
    )


def test_a_failure_after_the_version_is_published_takes_it_back(
    repository_with_one_version, tmp_path, monkeypatch
):
    import export.repository as repository_module

    model_dir = repository_with_one_version / NAME
    before = {p.relative_to(model_dir): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    real = repository_module.to_pbtxt

    def fail_on_the_last_flavour(config):
        if config.backend == "python":  # the embedded flavour comes after the published version
            raise OSError(28, "No space left on device")
        return real(config)

    monkeypatch.setattr(repository_module, "to_pbtxt", fail_on_the_last_flavour)
    with pytest.raises(RepositoryError, match="No space left on device"):
        write_version(repository_with_one_version, NAME, _content(tmp_path, 2), ConfigOptions())
    after = {p.relative_to(model_dir): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    assert after == before
    assert check_invariants(model_dir) == [1]
