"""Storage: local folders and S3 (against a real S3-protocol server on loopback)."""

from __future__ import annotations

import io
import pickle
import socket
import time

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from detstack.errors import DatasetError, StorageError
from training.coco import DatasetCheckError, load_dataset
from training.dataset import DetectionDataset, collate_fn
from training.storage import LocalStorage, S3Storage, open_storage, parse_s3_url

# --------------------------------------------------------------------------- local


def test_local_storage_lists_reads_and_names_a_missing_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images/a.png").write_bytes(b"abc")
    (tmp_path / "annotations.json").write_text("{}")
    storage = open_storage(tmp_path)
    assert isinstance(storage, LocalStorage)
    assert storage.list_files() == ["annotations.json", "images/a.png"]
    assert storage.list_files("images") == ["images/a.png"]
    assert storage.exists("images/a.png") and not storage.exists("images/b.png")
    assert storage.read_bytes("images/a.png") == b"abc"
    with pytest.raises(StorageError, match=r"file not found: .*images/b\.png"):
        storage.read_bytes("images/b.png")


def test_open_storage_refuses_a_missing_folder(tmp_path):
    with pytest.raises(StorageError, match="dataset folder not found"):
        open_storage(tmp_path / "nope")


@pytest.mark.parametrize(
    ("url", "expected"),
    [("s3://b/p/q/", ("b", "p/q")), ("s3://b", ("b", "")), ("s3://b/", ("b", ""))],
)
def test_parse_s3_url(url, expected):
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "/local/path"])
def test_parse_s3_url_refuses_urls_without_a_bucket(url):
    with pytest.raises(StorageError, match="s3://bucket/prefix"):
        parse_s3_url(url)


def test_s3_storage_pickles_without_its_client():
    storage = S3Storage("s3://bucket/prefix", endpoint_url="http://127.0.0.1:1")
    storage._client = object()  # a client must never travel to another process
    clone = pickle.loads(pickle.dumps(storage))
    assert clone._client is None and clone.location == "s3://bucket/prefix"
    assert clone.url("images/a.png") == "s3://bucket/prefix/images/a.png"


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3_dataset(s3_server, synthetic_dataset):
    return s3_server.upload_dir(synthetic_dataset, "detstack-data", "datasets/shapes")


@pytest.mark.s3
def test_dataset_loads_from_s3_like_from_the_local_folder(
    s3_server, s3_dataset, synthetic_dataset, tmp_path
):
    remote = load_dataset(s3_dataset, s3_endpoint_url=s3_server.endpoint_url, cache_dir=tmp_path)
    local = load_dataset(synthetic_dataset)
    assert remote.source == "s3://detstack-data/datasets/shapes"
    assert remote.image_ids == local.image_ids
    assert remote.fingerprint == local.fingerprint  # provenance does not depend on the location
    image_id = remote.image_ids[2]
    np.testing.assert_array_equal(remote.read_image(image_id), local.read_image(image_id))
    np.testing.assert_array_equal(remote.target(image_id)["boxes"], local.target(image_id)["boxes"])
    explicit = load_dataset(
        f"{s3_dataset}/annotations.json",
        s3_endpoint_url=s3_server.endpoint_url,
        cache_dir=tmp_path,
    )
    assert explicit.fingerprint == local.fingerprint


@pytest.mark.s3
def test_missing_s3_object_fails_naming_its_key(s3_server, synthetic_dataset, tmp_path):
    url = s3_server.upload_dir(synthetic_dataset, "detstack-data", "missing-one")
    s3_server.delete("detstack-data", "missing-one/images/000003.png")
    with pytest.raises(
        DatasetCheckError, match=r"s3://detstack-data/missing-one/images/000003\.png"
    ):
        load_dataset(url, s3_endpoint_url=s3_server.endpoint_url, cache_dir=tmp_path)
    storage = S3Storage(url, endpoint_url=s3_server.endpoint_url, cache_dir=tmp_path)
    with pytest.raises(StorageError, match=r"object not found: s3://detstack-data/missing-one/x"):
        storage.read_bytes("x")


@pytest.mark.s3
def test_s3_objects_are_read_once_then_served_from_the_cache(
    s3_server, synthetic_dataset, tmp_path
):
    bucket = s3_server.unique_bucket("cache")
    url = s3_server.upload_dir(synthetic_dataset, bucket, "cached")
    dataset = load_dataset(url, s3_endpoint_url=s3_server.endpoint_url, cache_dir=tmp_path)
    cached = sorted(p for p in (tmp_path / "s3").rglob("*") if p.is_file())
    assert len(cached) == 16 + 1  # every image (read by the check) and the annotations
    image_id = dataset.image_ids[0]
    before = dataset.read_image(image_id)
    # Replace the object on the server: the loaded dataset keeps reading its cached copy ...
    replacement = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(replacement, "PNG")
    s3_server.put_bytes(bucket, "cached/images/000000.png", replacement.getvalue())
    np.testing.assert_array_equal(dataset.read_image(image_id), before)
    # ... and a new load sees the new ETag and downloads the new content.
    reloaded = load_dataset(url, s3_endpoint_url=s3_server.endpoint_url, cache_dir=tmp_path)
    assert (reloaded.read_image(image_id) == (1, 2, 3)).all()


@pytest.mark.s3
def test_s3_dataset_works_in_dataloader_worker_processes(s3_server, s3_dataset, tmp_path):
    coco = load_dataset(s3_dataset, s3_endpoint_url=s3_server.endpoint_url, cache_dir=tmp_path)
    # An empty cache forces the worker to download through its own client.
    for path in (tmp_path / "s3").rglob("*.png"):
        path.unlink()
    loader = DataLoader(
        DetectionDataset(coco, coco.image_ids[:4]),
        batch_size=2,
        num_workers=1,
        collate_fn=collate_fn,
    )
    images = [image for batch, _ in loader for image in batch]
    assert len(images) == 4 and images[0].shape == (3, 64, 64)


@pytest.mark.s3
def test_unknown_bucket_is_named(s3_server, tmp_path):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        load_dataset(
            "s3://no-such-bucket/x", s3_endpoint_url=s3_server.endpoint_url, cache_dir=tmp_path
        )


@pytest.mark.s3
def test_prefix_without_annotations_says_what_it_expected(s3_server, tmp_path):
    s3_server.put_bytes("detstack-data", "empty/readme.txt", b"hello")
    with pytest.raises(DatasetError, match="no annotations in s3://detstack-data/empty"):
        load_dataset(
            "s3://detstack-data/empty", s3_endpoint_url=s3_server.endpoint_url, cache_dir=tmp_path
        )


@pytest.mark.s3
def test_unreachable_endpoint_fails_with_the_endpoint_named(s3_server, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot connect to the S3 endpoint .*:{port}"):
        load_dataset("s3://b/p", s3_endpoint_url=f"http://127.0.0.1:{port}", cache_dir=tmp_path)
    assert time.monotonic() - start < 60


@pytest.mark.s3
def test_cli_check_reads_s3_with_the_endpoint_flag(s3_server, s3_dataset, tmp_path, capsys):
    from cli.main import main

    argv = ["data", "check", s3_dataset, "--s3-endpoint-url", s3_server.endpoint_url]
    assert main([*argv, "--cache-dir", str(tmp_path)]) == 0
    assert "s3://detstack-data/datasets/shapes" in capsys.readouterr().out


@pytest.mark.s3
def test_endpoint_can_come_from_the_standard_aws_variable(
    s3_server, s3_dataset, tmp_path, monkeypatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    dataset = load_dataset(s3_dataset, cache_dir=tmp_path)
    assert dataset.report.usable and len(dataset.image_ids) == 16


@pytest.mark.s3
def test_missing_credentials_say_which_variables_to_set(
    s3_server, s3_dataset, tmp_path, monkeypatch
):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID"):
        load_dataset(s3_dataset, s3_endpoint_url=s3_server.endpoint_url, cache_dir=tmp_path)
