"""Pretrained weights: offline failure within the timeout, download into the cache, local files."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time

import pytest
import torch

from detstack.errors import WeightsError
from training._weights import cache_path, ensure_cached, load_detector_file
from training.categories import CategoryMap
from training.checkpoint import Checkpoint, save_checkpoint
from training.models import ModelConfig, build_model

TINY = ModelConfig(architecture="tiny", weights="none", weights_backbone="none")


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub cache, so no test reads or writes the user's."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def black_hole():
    """A loopback port that accepts connections and never answers (like a filtered network)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def _closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def test_download_that_never_answers_fails_within_the_timeout_naming_url_and_cache(
    hub_dir, black_hole
):
    url = f"http://127.0.0.1:{black_hole}/models/resnet18-f37072fd.pth"
    started = time.monotonic()
    with pytest.raises(WeightsError) as raised:
        ensure_cached(url, what="ImageNet-pretrained backbone of resnet18", timeout=0.3)
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert url in message
    assert str(hub_dir / "resnet18-f37072fd.pth") in message
    assert "--weights none" in message and "--weights PATH" in message
    assert not hub_dir.exists() or not any(hub_dir.iterdir())


def test_refused_connection_fails_with_the_same_advice(hub_dir):
    url = f"http://127.0.0.1:{_closed_port()}/x/fasterrcnn-abcdef12.pth"
    with pytest.raises(WeightsError, match=r"cannot download .* from http://127\.0\.0\.1"):
        ensure_cached(url, what="COCO-pretrained x", timeout=0.3)


@pytest.fixture
def file_server(tmp_path):
    """A loopback HTTP server serving files from a folder."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_lands_in_the_hub_cache_and_is_reused(hub_dir, file_server):
    root, base = file_server
    payload = b"weights" * 1000
    name = f"thing-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    (root / name).write_bytes(payload)
    path = ensure_cached(f"{base}/{name}", what="test", timeout=5)
    assert path == cache_path(f"{base}/{name}") == hub_dir / name
    assert path.read_bytes() == payload
    (root / name).unlink()  # a second call must not download again
    assert ensure_cached(f"{base}/{name}", what="test", timeout=5) == path


def test_download_with_a_wrong_hash_leaves_nothing_in_the_cache(hub_dir, file_server):
    root, base = file_server
    (root / "thing-deadbeef.pth").write_bytes(b"not the expected bytes")
    with pytest.raises(WeightsError, match="sha256"):
        ensure_cached(f"{base}/thing-deadbeef.pth", what="test", timeout=5)
    assert list(hub_dir.iterdir()) == []


def test_default_weights_offline_fail_fast_for_the_small_architectures(hub_dir, monkeypatch):
    monkeypatch.setattr("training._weights.DEFAULT_TIMEOUT", 0.2)
    monkeypatch.setattr(
        "training._weights.cache_path", lambda url: hub_dir / "never" / "resnet18.pth"
    )
    # Point the real ImageNet URL's host at nothing: no network is touched.
    monkeypatch.setattr(
        "urllib.request.urlopen",
        lambda *a, **k: (_ for _ in ()).throw(TimeoutError("timed out")),
    )
    with pytest.raises(WeightsError, match="--weights-backbone none"):
        build_model(ModelConfig(architecture="tiny", weights="none"), num_classes=2)


def test_local_file_of_other_categories_loads_everything_but_the_predictor(tmp_path):
    torch.manual_seed(1)
    source = build_model(TINY, num_classes=5)
    path = tmp_path / "source.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    target = build_model(TINY, num_classes=3)
    fresh_predictor = target.roi_heads.box_predictor.cls_score.weight.clone()
    load_detector_file(target, path)
    assert torch.equal(
        target.backbone.body.layer2[0].conv1.weight, source.backbone.body.layer2[0].conv1.weight
    )
    assert torch.equal(target.roi_heads.box_predictor.cls_score.weight, fresh_predictor)


def test_local_detstack_checkpoint_with_same_categories_keeps_its_predictor(tmp_path):
    source = build_model(TINY, num_classes=3)
    checkpoint = Checkpoint(TINY, CategoryMap((1, 2), ("a", "b")), source.state_dict())
    path = save_checkpoint(checkpoint, tmp_path / "best.pt")
    model = build_model(
        ModelConfig(architecture="tiny", weights=str(path), weights_backbone="none"), num_classes=3
    )
    assert torch.equal(
        model.roi_heads.box_predictor.cls_score.weight,
        source.roi_heads.box_predictor.cls_score.weight,
    )


def test_local_file_of_another_architecture_is_refused_with_the_mismatches(tmp_path):
    path = tmp_path / "quick.pth"
    torch.save(build_model(ModelConfig("quickstart", "none", "none"), 3).state_dict(), path)
    with pytest.raises(WeightsError, match=r"does not fit .* problems: backbone"):
        load_detector_file(build_model(TINY, num_classes=3), path)


def test_small_architectures_have_no_coco_weights_to_download():
    with pytest.raises(WeightsError, match="'quickstart' has no COCO-pretrained weights"):
        build_model(ModelConfig("quickstart", weights="DEFAULT"), num_classes=2)


def test_missing_weights_file_names_the_path(tmp_path):
    with pytest.raises(WeightsError, match=r"nope\.pth does not exist"):
        build_model(ModelConfig("tiny", weights=str(tmp_path / "nope.pth")), num_classes=2)


def test_rebuild_config_recreates_frozen_batch_norm_without_downloading(tmp_path):
    pretrained_like = ModelConfig(
        architecture="tiny", weights="none", frozen_batch_norm=True, weights_backbone="none"
    )
    model = build_model(pretrained_like, num_classes=2)
    rebuilt = build_model(pretrained_like.for_rebuild(), num_classes=2)
    rebuilt.load_state_dict(model.state_dict())  # strict: the same layers
    config = ModelConfig("fasterrcnn_mobilenet_v3_large_320_fpn", weights="DEFAULT")
    assert config.for_rebuild().frozen_batch_norm is True
    assert config.for_rebuild().weights == "none"
    mobilenet = build_model(config.for_rebuild(), num_classes=2)
    assert "FrozenBatchNorm2d" in {type(m).__name__ for m in mobilenet.backbone.modules()}
