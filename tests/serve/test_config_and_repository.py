"""Unit tests: ServeConfig checks, repository checks, S3 URLs, Triton log reading, the binary."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import pytest

from detstack.contract import DEFAULT_MODEL_NAME
from detstack.errors import ConfigError, RepositoryError, ServeError
from serve import Endpoints, ServeConfig
from serve._launch import find_tritonserver
from serve._repository import check_local_repository, triton_s3_url
from serve._triton_log import failure_reason
from tests.fixtures.triton import write_echo_repository


def test_config_refuses_two_endpoints_on_the_same_port():
    with pytest.raises(ConfigError, match="must differ"):
        ServeConfig("repo", http_port=9000, grpc_port=9000)


@pytest.mark.parametrize("port", [-1, 65536, "8000", True])
def test_config_refuses_a_port_outside_0_65535(port):
    with pytest.raises(ConfigError, match="port"):
        ServeConfig("repo", http_port=port)


def test_config_refuses_an_s3_endpoint_for_a_local_repository():
    with pytest.raises(ConfigError, match="s3://"):
        ServeConfig("model_repository", s3_endpoint_url="http://127.0.0.1:9000")


def test_config_picks_the_flavour_of_its_mode():
    assert ServeConfig("repo").config_name == "embedded"
    assert ServeConfig("repo", mode="container").config_name == "gpu"
    assert ServeConfig("repo", model_config_name="cpu").config_name == "cpu"


def test_endpoints_of_a_wildcard_bind_are_reached_through_loopback():
    endpoints = Endpoints("0.0.0.0", 8000, 8001, 8002)
    assert endpoints.http == "127.0.0.1:8000"
    assert endpoints.grpc == "127.0.0.1:8001"
    assert endpoints.metrics_url == "http://127.0.0.1:8002/metrics"


def test_repository_check_lists_models_and_versions(tmp_path):
    root = write_echo_repository(tmp_path / "repo", versions=(1, 3))
    (entry,) = check_local_repository(root, "embedded")
    assert (entry.name, entry.versions) == ("my-detection-model", (1, 3))
    assert entry.config_file.name == "embedded.pbtxt"


def test_missing_repository_is_named(tmp_path):
    with pytest.raises(RepositoryError, match="does not exist"):
        check_local_repository(tmp_path / "nowhere", "embedded")


def test_empty_repository_says_what_layout_is_expected(tmp_path):
    with pytest.raises(RepositoryError, match=r"holds no model folder.*config\.pbtxt"):
        check_local_repository(tmp_path, "embedded")


def test_model_without_any_config_is_named(tmp_path):
    (tmp_path / "detector" / "1").mkdir(parents=True)
    with pytest.raises(
        RepositoryError, match=r"'detector'.*configs/embedded\.pbtxt or config\.pbtxt"
    ):
        check_local_repository(tmp_path, "embedded")


def test_gpu_only_model_is_refused_by_the_embedded_server_with_a_way_out(tmp_path):
    root = write_echo_repository(tmp_path / "repo")
    (root / "my-detection-model" / "configs" / "embedded.pbtxt").unlink()
    with pytest.raises(RepositoryError, match=r"backend 'onnxruntime'.*--mode container"):
        check_local_repository(root, "embedded")


def test_model_without_a_version_folder_is_named(tmp_path):
    root = write_echo_repository(tmp_path / "repo")
    (root / "my-detection-model" / "1" / "model.py").unlink()
    (root / "my-detection-model" / "1").rmdir()
    with pytest.raises(RepositoryError, match="no version folder"):
        check_local_repository(root, "embedded")


def test_unparsable_config_is_named(tmp_path):
    root = write_echo_repository(tmp_path / "repo")
    (root / "my-detection-model" / "configs" / "embedded.pbtxt").write_text("backend: {")
    with pytest.raises(RepositoryError, match="cannot parse"):
        check_local_repository(root, "embedded")


@pytest.mark.parametrize(
    ("url", "endpoint", "expected"),
    [
        ("s3://models/detection", None, "s3://models/detection"),
        ("s3://models", None, "s3://models"),
        ("s3://models/a/b/", "http://127.0.0.1:9000", "s3://http://127.0.0.1:9000/models/a/b"),
        (
            "s3://models/x",
            "https://minio.example.com",
            "s3://https://minio.example.com:443/models/x",
        ),
    ],
)
def test_s3_urls_take_tritons_form(url, endpoint, expected):
    assert triton_s3_url(url, endpoint) == expected


@pytest.mark.parametrize(
    ("url", "endpoint", "message"),
    [
        ("s3://My_Bucket/x", None, "bucket"),
        ("s3://models/with space", None, "prefix part"),
        ("s3://models/x", "ftp://host:21", "http://host:port"),
        ("s3://models/x", "http://host:99999", "port"),
    ],
)
def test_s3_urls_triton_cannot_read_are_refused_with_the_rule(url, endpoint, message):
    with pytest.raises(ConfigError, match=message):
        triton_s3_url(url, endpoint)


def test_failure_reason_quotes_tritons_model_load_error_without_the_traceback():
    log = (
        'I1129 03:14:05.1 1 server.cc:1] "loading"\n'
        "E1129 03:14:45.199181 9266 model_lifecycle.cc:642] \"failed to load 'det' version 2: "
        'Internal: FileNotFoundError: model.onnx is missing\\n\\nAt:\\n  /repo/det/2/model.py(9)"\n'
        "error: creating server: Internal - failed to load all models\n"
    )
    reason = failure_reason(log, Path("/run/tritonserver.log"), [])
    assert reason.startswith("model 'det' version 2 failed to load: Internal: FileNotFoundError")
    assert "model.py(9)" not in reason
    assert "/run/tritonserver.log" in reason


def test_failure_reason_never_shows_a_secret():
    log = "error: creating server: Invalid argument - bad value 'Bearer s3cr3t-value-1234567'\n"
    reason = failure_reason(log, None, ["s3cr3t-value-1234567"])
    assert "s3cr3t" not in reason and "<redacted>" in reason


def test_tritonserver_binary_of_nvidia_pytriton_is_found():
    installation = find_tritonserver()
    assert installation.binary.is_file()
    assert (installation.python_backend / "libtriton_python.so").is_file()


def test_missing_nvidia_pytriton_says_which_package_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else real(name, *a)
    )
    with pytest.raises(ServeError, match="pip install nvidia-pytriton"):
        find_tritonserver()


def test_python_version_without_a_stub_is_named():
    installation = find_tritonserver()
    with pytest.raises(ServeError, match=r"no python-backend stub for Python 2\.7"):
        installation.stub_for("2.7")


def test_a_version_the_label_map_leaves_out_is_served_with_a_warning_saying_how_to_repair(
    tmp_path, caplog
):
    # The state an export killed between publishing version 2 and rewriting the configs leaves.
    root = write_echo_repository(tmp_path / "repo", versions=(1,))
    shutil.copytree(root / DEFAULT_MODEL_NAME / "1", root / DEFAULT_MODEL_NAME / "2")
    with caplog.at_level(logging.WARNING, logger="serve._repository"):
        (entry,) = check_local_repository(root, "embedded")
    assert entry.versions == (1, 2)
    assert "version(s) 2 are not in the label map" in caplog.text
    assert "next detstack export rewrites the configs" in caplog.text
