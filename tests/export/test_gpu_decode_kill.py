"""An export --gpu-decode killed at any file-system call leaves the siblings consistent too.

Same method as ``test_repository_kill.py`` (a forked child running a real ``write_version``,
``SIGKILL``-ed before its N-th file-system call, for N = 1, 2, ... until one finishes), with the
decode-on-GPU siblings on. After every kill: each sibling that exists is whole (both configs,
every version with its files), holds only versions the model has, the ensemble never names a
sibling that is missing, and both serving flavours accept the repository. The next export
mirrors every version and leaves nothing hidden behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from detstack.contract import gpu_decode_model_names
from export.repository import existing_versions, write_version
from export.triton_config import ConfigOptions, parse_pbtxt
from serve._repository import check_local_repository
from tests.export.test_repository_kill import NAME, _content, _kill_at, check_invariants

ON = ConfigOptions(gpu_decode=True)
#: What each sibling's version holds (gate, decode, detector).
_VERSION_FILES = (
    ("model.py", "detstack/wire.py", "detstack/errors.py"),
    ("dali.py",),
    ("model.onnx",),
)


def check_siblings(repository: Path) -> None:
    model_versions = set(existing_versions(repository / NAME))
    present = []
    for sibling, files in zip(gpu_decode_model_names(NAME), _VERSION_FILES, strict=True):
        model_dir = repository / sibling
        if not model_dir.exists():
            continue
        present.append(sibling)
        for path in (model_dir / "config.pbtxt", model_dir / "configs" / "gpu.pbtxt"):
            config = parse_pbtxt(path.read_text(encoding="utf-8"))
            for entry in config.model_warmup:  # a config names only warmup files that exist
                for tensor in entry.inputs.values():
                    assert (model_dir / "warmup" / tensor.input_data_file).is_file(), sibling
        versions = existing_versions(model_dir)
        assert set(versions) <= model_versions, (sibling, versions, model_versions)
        for version in versions:
            for name in files:
                assert (model_dir / str(version) / name).is_file(), (sibling, version, name)
    gpu = parse_pbtxt((repository / NAME / "config.pbtxt").read_text(encoding="utf-8"))
    if gpu.platform == "ensemble":
        assert present == list(gpu_decode_model_names(NAME))
    check_local_repository(repository, "embedded")
    check_local_repository(repository, "gpu", available_backends=None)


@pytest.mark.slow  # one fork, kill and two exports per step: ~90 steps
def test_an_export_with_gpu_decode_killed_at_any_step_leaves_consistent_siblings(tmp_path):
    template = tmp_path / "template"
    write_version(template, NAME, _content(tmp_path, 1), ON)
    second, third = _content(tmp_path, 2), _content(tmp_path, 3)
    step, kills, stuck = 0, 0, 0
    while True:
        step += 1
        assert step < 1000, "the export never finished"
        repository = tmp_path / f"run-{step}"
        shutil.copytree(template, repository)
        outcome = _kill_at(step, lambda r=repository: write_version(r, NAME, second, ON))
        stuck += outcome == "stuck"
        assert stuck <= 1, f"forked export children hung {stuck} times (their stacks are above)"
        finished = outcome == "finished"
        versions = check_invariants(repository / NAME)
        check_siblings(repository)
        written = write_version(repository, NAME, third, ON)
        check_siblings(repository)
        for sibling in gpu_decode_model_names(NAME):
            assert existing_versions(repository / sibling) == [*versions, written.version]
        warmup = {p.name for p in (repository / f"{NAME}-detector" / "warmup").iterdir()}
        assert all(name.startswith(f"v{written.version}-") for name in warmup), (step, warmup)
        leftovers = list(repository.rglob(".export-*"))
        assert leftovers == [], (step, leftovers)
        shutil.rmtree(repository)
        if finished:
            break
        kills += 1
    assert kills >= 40
