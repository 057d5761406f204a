"""``detstack serve`` (embedded) serves a repository written with ``export --gpu-decode``.

The sibling models ``<name>-gate``, ``-decode`` (DALI) and ``-detector`` (onnxruntime) have only
the GPU flavour, which the embedded server cannot load; it serves a view of the repository
without them (links to the other model folders), in model control mode ``none`` as always.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detstack.contract import DEFAULT_MODEL_NAME
from detstack.errors import RepositoryError
from export.repository import VersionContent, write_version
from export.samples import SampleImage
from export.triton_config import ConfigOptions
from serve._repository import check_local_repository, flavour_view
from tests.fixtures.triton import write_echo_repository

NAME = DEFAULT_MODEL_NAME
SIBLINGS = tuple(f"{NAME}{suffix}" for suffix in ("-gate", "-decode", "-detector"))


def add_siblings(repository: Path, tmp_path: Path) -> None:
    """Add the --gpu-decode siblings of NAME (their versions mirror NAME's) to ``repository``."""
    onnx = tmp_path / "graph.onnx"
    onnx.write_bytes(b"graph")
    samples = [SampleImage("sample0.png", np.zeros((6, 8, 3), np.uint8), b"png", "")]
    content = VersionContent(onnx, {}, samples, {1: {"name": "thing", "color": "#e6194b"}})
    write_version(repository, "scratch", content, ConfigOptions(gpu_decode=True))
    for suffix in ("-gate", "-decode", "-detector"):
        (repository / f"scratch{suffix}").rename(repository / f"{NAME}{suffix}")
    shutil.rmtree(repository / "scratch")


def test_the_embedded_check_leaves_out_gpu_decode_siblings_and_the_view_links_the_rest(tmp_path):
    repository = write_echo_repository(tmp_path / "repo")
    add_siblings(repository, tmp_path)
    entries = check_local_repository(repository, "embedded")
    assert [entry.name for entry in entries] == [NAME]
    (tmp_path / "launch-1").mkdir()
    view = flavour_view(repository, "embedded", tmp_path / "launch-1")
    assert view is not None
    assert sorted(p.name for p in view.iterdir()) == [NAME]
    assert (view / NAME).resolve() == (repository / NAME).resolve()
    # The GPU flavour (container) serves every model, siblings included.
    gpu = check_local_repository(repository, "gpu", available_backends=None)
    assert sorted(entry.name for entry in gpu) == sorted([NAME, *SIBLINGS])
    assert flavour_view(repository, "gpu", tmp_path / "launch-2") is None


def test_without_siblings_the_repository_is_served_as_it_is(tmp_path):
    repository = write_echo_repository(tmp_path / "repo")
    assert flavour_view(repository, "embedded", tmp_path / "launch") is None
    assert not (tmp_path / "launch").exists()


def test_a_gpu_only_model_that_is_no_sibling_is_still_refused_with_a_way_out(tmp_path):
    repository = write_echo_repository(tmp_path / "repo")
    (repository / NAME / "configs" / "embedded.pbtxt").unlink()
    with pytest.raises(RepositoryError, match="uses backend 'onnxruntime'"):
        check_local_repository(repository, "embedded")


def _png(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.triton
def test_embedded_server_starts_and_answers_on_a_repository_exported_with_gpu_decode(
    tiny_checkpoint, tmp_path, triton_server_factory
):
    import tritonclient.http as http

    from tests.fixtures.repository import export_tiny

    repository = tmp_path / "model_repository"
    export_tiny(repository, tiny_checkpoint, gpu_decode=True)
    assert sorted(p.name for p in repository.iterdir()) == sorted([NAME, *SIBLINGS])
    manifest = json.loads((repository / NAME / "1" / "manifest.json").read_text())
    assert manifest["export"]["flavours"]["gpu"]["gpu_decode"]["max_file_bytes"] == 64 << 20
    server = triton_server_factory(repository, poll=True, poll_interval_s=1)
    assert server.models == {NAME: (1,)}
    client = http.InferenceServerClient(server.endpoints.http)
    request = http.InferInput("image_bytes", [1], "BYTES")
    request.set_data_from_numpy(np.array([_png()], dtype=object))
    result = client.infer(NAME, [request])
    assert result.as_numpy("boxes").shape[1] == 4
    # --poll still finds a new version inside the linked model folder.
    export_tiny(repository, tiny_checkpoint, gpu_decode=True)
    deadline = time.monotonic() + 60
    while server.refresh_models().get(NAME) != (2,) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert server.models == {NAME: (2,)}
    assert os.path.samefile(
        repository / f"{NAME}-detector" / "2" / "model.onnx", repository / NAME / "2" / "model.onnx"
    )
