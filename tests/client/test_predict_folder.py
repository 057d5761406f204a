"""``predict_to_folder`` (what ``detstack predict`` and the pipeline's smoke stage run), and how
a client is built, over a fake transport: no server, so the folder's rules are tested alone."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from client import ClientConfig, DetectionClient, predict_to_folder
from client.codec import BOX_DECIMALS, SCORE_DECIMALS
from detstack.contract import LABEL_MAP_PARAMETER
from detstack.errors import BadInputError
from detstack.images import probe_image

LABEL_MAP = {"1": {"7": {"name": "circle", "color": "#66c2a5"}}}


class _AnsweringTransport:
    """Finds one 'circle' covering the image (score 0.9) and a weak one (0.1) in every file."""

    def __init__(self, settings) -> None:
        self.settings = settings

    def infer(self, payload):
        width, height = probe_image(bytes(payload.array.reshape(-1)[0]))
        outputs = {
            "boxes": np.array([[0.123456, 0, width, height], [1, 1, 2, 2]], dtype=np.float32),
            "scores": np.array([0.987654, 0.1], dtype=np.float32),
            "labels": np.array([7, 7], dtype=np.int64),
        }
        return outputs, "1"

    def server_ready(self) -> bool:
        return True

    def model_ready(self) -> bool:
        return True

    def model_config(self):
        return {"parameters": {LABEL_MAP_PARAMETER: {"string_value": json.dumps(LABEL_MAP)}}}

    def statistics(self):
        return {}

    def close(self) -> None:
        pass


@pytest.fixture
def client(monkeypatch):
    monkeypatch.setattr("client._client.open_transport", _AnsweringTransport)
    with DetectionClient("triton:8001", model="shapes") as opened:
        yield opened


def _image(path, width, height, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (200, 30, 30)).save(path, format=fmt)
    return path


def test_predict_to_folder_writes_every_image_and_one_json_naming_each_failure_by_its_path(
    client, tmp_path
):
    first = _image(tmp_path / "a" / "photo.png", 40, 30, "PNG")
    second = _image(tmp_path / "b" / "photo.png", 20, 10, "PNG")
    jpeg = _image(tmp_path / "c" / "holiday.JPEG", 24, 16, "JPEG")
    missing = tmp_path / "missing.png"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    out = tmp_path / "out"

    result = predict_to_folder(client, [first, second, missing, jpeg, broken], out, 0.5)

    assert [o.source for o in result.images] == list(
        map(str, [first, second, missing, jpeg, broken])
    )
    assert [o.output.name if o.output else None for o in result.images] == [
        "photo.png",
        "photo_1.png",
        None,
        "holiday.jpg",
        None,
    ]
    assert result.failed == 2 and result.detections == 3  # the 0.1 detections are not kept
    document = json.loads(result.detections_file.read_text())
    assert result.detections_file == out / "detections.json"
    assert document["model"] == "shapes" and document["url"] == "grpc://triton:8001"
    assert document["threshold"] == 0.5
    entries = document["images"]
    assert entries[2] == {"image": str(missing), "error": entries[2]["error"]}
    assert str(missing) in entries[2]["error"] and "cannot read" in entries[2]["error"]
    assert str(broken) in entries[4]["error"] and "row 4" not in entries[4]["error"]
    assert set(entries[0]) == {"image", "output", "width", "height", "model_version", "detections"}
    assert (entries[0]["width"], entries[0]["height"]) == (40, 30)
    assert entries[0]["detections"] == [
        {
            "box": [round(0.123456, BOX_DECIMALS), 0.0, 40.0, 30.0],
            "score": round(0.987654, SCORE_DECIMALS),
            "label": 7,
            "name": "circle",
        }
    ]
    for entry in (entries[0], entries[1], entries[3]):
        with Image.open(entry["output"]) as drawn:
            assert drawn.size == (entry["width"], entry["height"])
    with Image.open(out / "holiday.jpg") as drawn:
        assert drawn.format == "JPEG"


def test_predict_to_folder_takes_named_bytes_as_the_pipeline_sends_them(client, tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12)).save(buffer, format="PNG")
    result = predict_to_folder(client, [("000001.png", buffer.getvalue())], tmp_path, 0.0)
    (outcome,) = result.images
    assert outcome.ok and outcome.output == tmp_path / "000001.png"
    assert len(outcome.detections) == 2 and outcome.detections.names == ("circle", "circle")


def test_predict_to_folder_refuses_a_threshold_outside_0_to_1_before_sending(client, tmp_path):
    with pytest.raises(BadInputError, match=r"got 1\.5"):
        predict_to_folder(client, [tmp_path / "x.png"], tmp_path / "out", 1.5)
    assert not (tmp_path / "out").exists()


def test_from_config_builds_through_init_like_any_other_client(monkeypatch):
    monkeypatch.setattr(
        "client._client.open_transport", lambda settings: SimpleNamespace(close=lambda: None)
    )
    calls = []

    class Counting(DetectionClient):
        def __init__(self, *args, **kwargs):
            calls.append(kwargs)
            super().__init__(*args, **kwargs)

    config = ClientConfig(url=("a:1", "b:2"), model="m", token="t" * 20, wire="pixels")
    with Counting.from_config(config) as built:
        assert built.config == config
    assert len(calls) == 1, "from_config must run __init__ (a subclass's too)"
