"""Bulk scoring on Spark (``local[2]``) against the real embedded Triton serving the tiny model.

One Spark session serves the whole module (it costs 10-30 s to start on a loaded machine); the
checks that need no Spark (bad settings, bad input, output naming) run before any session.
"""

from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cli.main import main as detstack
from client import DetectionClient, encode_images, revert_predict_to_array, row_errors
from client._bulk_output import default_output
from client.bulk import BulkConfig, read_scored, score_dataframe, score_table
from detstack.errors import ConfigError, ServerUnreachableError, StorageError
from serve._server import find_free_ports
from tests.fixtures.models import tiny_shape_image

pyspark = pytest.importorskip("pyspark")

ROWS = 300
BAD = {7: "not base64!", 50: "not an image", 123: "truncated", 250: None}


def _png(seed: int) -> bytes:
    image, _, _ = tiny_shape_image(np.random.default_rng(seed))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _table(rows: int = ROWS, bad: dict[int, str | None] = BAD) -> pd.DataFrame:
    """``rows`` tiny-model images with two id columns; the rows of ``bad`` broken as it says."""
    cells: list[str | None] = [base64.b64encode(_png(i)).decode() for i in range(rows)]
    for position, kind in bad.items():
        if position >= rows:
            continue
        if kind == "not base64!":
            cells[position] = "not base64!"
        elif kind == "not an image":
            cells[position] = base64.b64encode(b"hello, I am plain text").decode()
        elif kind == "truncated":
            cells[position] = base64.b64encode(_png(position)[:60]).decode()
        else:
            cells[position] = None
    return pd.DataFrame(
        {
            "image_id": [f"img-{i:04d}" for i in range(rows)],
            "shard": np.arange(rows, dtype=np.int32) % 3,
            "image_data": cells,
        }
    )


@pytest.fixture(scope="module")
def spark(s3_server):
    """One local[2] session for the module.

    It asks for ``s3_server`` first because Spark's Python workers inherit the environment of
    the JVM when it starts: the S3 server's credentials must be set by then, as a user's are.
    """
    from client.bulk import spark_session

    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java 17+ runtime (.ci/run installs openjdk-17-jre-headless)")

    session = spark_session(
        "local[2]",
        {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2"},
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _config(server, **overrides) -> BulkConfig:
    grpc = server.endpoints.grpc
    port = grpc.rsplit(":", 1)[1]
    # The same server under two names, so the test sees tasks spread over two URLs.
    options = {"urls": (grpc, f"localhost:{port}"), "batch_rows": 64, "concurrency": 4}
    options.update(overrides)
    return BulkConfig(**options)


# --- no Spark, no server -----------------------------------------------------------------


def test_bulk_config_refuses_bad_settings_and_names_the_value():
    with pytest.raises(ConfigError, match="non-empty sequence"):
        BulkConfig(urls="localhost:8001")
    with pytest.raises(ConfigError, match="batch_rows must be at least 1, got 0"):
        BulkConfig(urls=("localhost:8001",), batch_rows=0)
    with pytest.raises(ConfigError, match="'ftp'"):
        BulkConfig(urls=("localhost:8001",), protocol="ftp")
    with pytest.raises(ConfigError, match="not host:port"):
        BulkConfig(urls=("http://host/path",))


def test_default_output_is_a_scored_parquet_folder_next_to_the_input():
    assert default_output("/data/images.parquet") == "/data/images.scored.parquet"
    assert default_output("s3://bucket/in/images.csv") == "s3://bucket/in/images.scored.parquet"
    assert default_output("s3://bucket/in/shards/") == "s3://bucket/in/shards.scored.parquet"


def test_score_table_refuses_a_bad_input_before_starting_spark(tmp_path):
    config = BulkConfig(urls=("localhost:1",))
    with pytest.raises(ConfigError, match="does not exist"):
        score_table(str(tmp_path / "missing.parquet"), config=config)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"suffix '\.txt'"):
        score_table(str(tmp_path / "notes.txt"), config=config)
    with pytest.raises(ConfigError, match="hdfs://"):
        score_table("hdfs://namenode/images.parquet", config=config)
    pd.DataFrame({"picture": ["x"]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(ConfigError, match=r"no column 'image_data'.*'picture'"):
        score_table(str(tmp_path / "other.parquet"), config=config)
    pd.DataFrame({"image_data": ["x"], "error": ["y"]}).to_parquet(tmp_path / "clash.parquet")
    with pytest.raises(ConfigError, match=r"\['error'\] would clash"):
        score_table(str(tmp_path / "clash.parquet"), config=config)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(StorageError, match=r"broken\.parquet"):
        score_table(str(tmp_path / "broken.parquet"), config=config)


def test_score_table_never_overwrites_an_output_it_did_not_write(tmp_path):
    pd.DataFrame({"image_data": ["x"]}).to_parquet(tmp_path / "images.parquet")
    output = tmp_path / "images.scored.parquet"
    output.mkdir()
    (output / "precious.csv").write_text("keep me")
    config = BulkConfig(urls=("localhost:1",))
    with pytest.raises(ConfigError, match="already holds 1 file"):
        score_table(str(tmp_path / "images.parquet"), config=config)
    with pytest.raises(ConfigError, match=r"did not write .*precious\.csv"):
        score_table(
            str(tmp_path / "images.parquet"),
            config=BulkConfig(urls=("localhost:1",), overwrite=True),
        )
    assert (output / "precious.csv").read_text() == "keep me"


def test_score_cli_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        detstack(["score", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--output", "--overwrite", "--url", "--protocol", "--model", "--token", "--token-file",
        "--timeout", "--retries", "--ready-timeout", "--format", "--column", "--keep",
        "--s3-endpoint-url", "--rows-per-split", "--batch-rows", "--concurrency", "--master",
        "--conf", "--no-progress",
    ):  # fmt: skip
        assert option in text


def test_score_cli_names_the_bad_value_and_exits_1(tmp_path, capsys):
    assert detstack(["score", str(tmp_path / "nope.parquet"), "--url", "localhost:1"]) == 1
    assert "nope.parquet" in capsys.readouterr().err
    assert detstack(["score", str(tmp_path / "x.parquet"), "--batch-rows", "0"]) == 1
    assert "batch_rows must be at least 1, got 0" in capsys.readouterr().err


# --- Spark local[2] against the real Triton ------------------------------------------------


@pytest.mark.slow
@pytest.mark.triton
def test_score_table_scores_every_good_row_and_keeps_ids_order_and_reasons_of_bad_rows(
    spark, triton_server, tmp_path
):
    frame = _table()
    source = tmp_path / "images.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), source, row_group_size=40)
    seen: list[tuple[int, int]] = []

    report = score_table(
        str(source),
        config=_config(triton_server, rows_per_split=80),
        spark=spark,
        progress=lambda done, total: seen.append((done, total)),
    )

    assert report.output == str(tmp_path / "images.scored.parquet")
    assert (tmp_path / "images.scored.parquet" / "_SUCCESS").exists()
    assert (report.rows, report.failed, report.splits) == (ROWS, len(BAD), 4)
    # Both URLs answered; every request sent was a good row or the truncated PNG (refused).
    assert len(report.requests_per_url) == 2 and min(report.requests_per_url.values()) > 0
    assert sum(report.requests_per_url.values()) == ROWS - len(BAD)
    assert seen and seen[-1] == (4, 4)

    scored = read_scored(report.output)
    assert list(scored.columns) == [
        "image_id", "shard", "input_row", "boxes", "labels", "scores", "error",
    ]  # fmt: skip
    assert scored["image_id"].tolist() == frame["image_id"].tolist()
    assert scored["shard"].tolist() == frame["shard"].tolist()
    assert scored["input_row"].tolist() == list(range(ROWS))
    assert pd.read_parquet(report.output).shape == scored.shape  # plain pandas reads it too

    failed = scored[scored["error"].notna()]
    assert failed["input_row"].tolist() == sorted(BAD)
    assert failed[["boxes", "labels", "scores"]].isna().all().all()
    reasons = dict(zip(failed["input_row"], failed["error"], strict=True))
    assert "invalid base64" in reasons[7]
    assert "not an image" in reasons[50]
    assert "missing image data" in reasons[250]
    assert reasons[123]  # the server refused the truncated PNG, with its reason

    good = scored[scored["error"].isna()]
    assert len(good) == ROWS - len(BAD)
    arrays = revert_predict_to_array(good)
    assert sum(len(labels) for labels in arrays["labels"]) > len(good) // 2  # it detects

    # The same rows through predict(df) directly give the same answers.
    sample = [0, 1, 2, 100, 299]
    with DetectionClient(triton_server.endpoints.grpc) as client:
        direct = client.predict(frame.loc[sample, ["image_data"]])
    assert not row_errors(direct)
    expected = revert_predict_to_array(direct)
    for position in sample:
        row = arrays.loc[scored.index[scored["input_row"] == position][0]]
        np.testing.assert_array_equal(row["labels"], expected.loc[position, "labels"])
        np.testing.assert_allclose(row["boxes"], expected.loc[position, "boxes"], atol=1e-3)


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.s3
def test_score_cli_reads_csv_from_s3_and_writes_the_result_next_to_it(
    spark, triton_server, s3_server, capsys
):
    bad = {3: "not base64!", 10: None, 20: "not an image"}
    frame = _table(24, bad)
    buffer = io.BytesIO()
    pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    bucket = s3_server.unique_bucket("bulk")
    url = s3_server.put_bytes(bucket, "in/images.csv", buffer.getvalue())

    status = detstack(
        [
            "score", url, "--url", triton_server.endpoints.grpc,
            "--s3-endpoint-url", s3_server.endpoint_url, "--keep", "image_id",
            "--batch-rows", "10", "--no-progress",
        ]
    )  # fmt: skip

    out = capsys.readouterr().out
    assert status == 0, out
    assert "scored 24 rows (3 failed)" in out
    scored = read_scored(f"s3://{bucket}/in/images.scored.parquet",
                         s3_endpoint_url=s3_server.endpoint_url)  # fmt: skip
    assert list(scored.columns) == [
        "image_id", "input_row", "boxes", "labels", "scores", "error",
    ]  # fmt: skip
    assert scored["image_id"].tolist() == frame["image_id"].tolist()
    assert scored["error"].notna().tolist() == [i in bad for i in range(24)]
    assert "missing image data" in scored["error"][10]  # an empty CSV cell is a missing image


@pytest.mark.slow
@pytest.mark.triton
def test_score_dataframe_scores_a_spark_dataframe_with_one_row_per_input_row(spark, triton_server):
    images = encode_images([_png(i) for i in range(12)])
    images["key"] = range(12)
    images.loc[3, "image_data"] = "%%%"
    scored = score_dataframe(
        spark.createDataFrame(images).repartition(3), _config(triton_server)
    ).toPandas()

    assert sorted(scored["key"]) == list(range(12))
    assert list(scored.columns) == ["key", "boxes", "labels", "scores", "error"]
    assert scored.set_index("key")["error"].notna().to_dict() == {i: i == 3 for i in range(12)}


@pytest.mark.slow
@pytest.mark.triton
def test_score_table_scores_every_row_when_one_of_its_servers_is_down(
    spark, triton_server, tmp_path
):
    (dead,) = find_free_ports("127.0.0.1", 1)
    pq.write_table(
        pa.Table.from_pandas(_table(40, {}), preserve_index=False),
        tmp_path / "x.parquet",
        row_group_size=10,
    )
    config = BulkConfig(urls=(f"127.0.0.1:{dead}", triton_server.endpoints.grpc), batch_rows=10)

    report = score_table(str(tmp_path / "x.parquet"), config=config, spark=spark)

    assert (report.rows, report.failed) == (40, 0)  # its one task started on the dead one
    assert report.requests_per_url.get(f"grpc://127.0.0.1:{dead}", 0) == 0


@pytest.mark.slow
@pytest.mark.triton
def test_score_table_fails_with_the_server_error_when_no_server_answers(spark, tmp_path):
    (port,) = find_free_ports("127.0.0.1", 1)
    pq.write_table(pa.Table.from_pandas(_table(5), preserve_index=False), tmp_path / "x.parquet")
    config = BulkConfig(urls=(f"127.0.0.1:{port}",), ready_timeout=1.0, retries=0)

    with pytest.raises(ServerUnreachableError, match=f"127.0.0.1:{port}"):
        score_table(str(tmp_path / "x.parquet"), config=config, spark=spark)
    assert not (tmp_path / "x.scored.parquet" / "_SUCCESS").exists()


def test_output_path_is_not_the_input(tmp_path):
    pd.DataFrame({"image_data": ["x"]}).to_parquet(tmp_path / "images.parquet")
    with pytest.raises(ConfigError, match="would overwrite the input"):
        score_table(
            str(tmp_path / "images.parquet"),
            str(tmp_path),
            config=BulkConfig(urls=("localhost:1",)),
        )
