"""COCO files built to hurt: huge or deep values, duplicate ids, truncated images, fuzzing."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from detstack.errors import DatasetError
from tests.training._coco_cases import (  # noqa: F401 (the fixture is used by every test)
    CATEGORIES,
    _ann,
    _image,
    _image_check_cache_in_tmp,
    _load,
)
from training.coco import DatasetCheckError, format_report

# --------------------------------------------------------------------------- hostile files


def test_duplicate_annotation_ids_fail_naming_the_id_and_every_place(tmp_path, write_coco):
    # pycocotools keeps only the last annotation of an id: evaluation would lose a box.
    root = write_coco(
        tmp_path,
        images=[_image(1), _image(2)],
        annotations=[_ann(7, 1, [1, 1, 4, 4]), _ann(8, 1, [5, 5, 4, 4]), _ann(7, 2, [2, 2, 3, 3])],
        categories=CATEGORIES,
    )
    with pytest.raises(
        DatasetCheckError,
        match=r"1 duplicate annotation ids: id 7 at annotations\[0\], "
        r"annotations\[2\]",
    ) as error:
        _load(root)
    assert error.value.report.duplicate_annotation_ids == 1
    assert "duplicate annotation id" in format_report(error.value.report)


def _truncated_png(width=40, height=30):
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 60).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def test_truncated_image_whose_header_is_fine_fails_the_check(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1), _image(2)],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
    )
    (root / "images/2.png").write_bytes(_truncated_png())
    with pytest.raises(
        DatasetCheckError, match=r"1 unreadable image files: .*images/2\.png: truncated"
    ):
        _load(root)
    assert _load(root, decode_images=False).image_ids == [1, 2]  # the header probe misses it


def test_image_check_decodes_each_file_once_then_only_what_changed(
    tmp_path, write_coco, monkeypatch
):
    import training._image_check as image_check

    decoded = []
    real_decode = image_check.decode_image

    def counting_decode(data, *, source, max_pixels):
        decoded.append(source.rsplit("/", 1)[-1])
        return real_decode(data, source=source, max_pixels=max_pixels)

    monkeypatch.setattr(image_check, "decode_image", counting_decode)
    root = write_coco(
        tmp_path / "ds",
        images=[_image(i) for i in (1, 2, 3)],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
    )
    _load(root)
    assert sorted(decoded) == ["1.png", "2.png", "3.png"]
    decoded.clear()
    _load(root)
    assert decoded == []  # a rerun reads the cache
    Image.new("RGB", (40, 30), (1, 2, 3)).save(root / "images/2.png")  # changed content
    (root / "images/3.png").write_bytes(_truncated_png())
    with pytest.raises(DatasetCheckError, match=r"images/3\.png"):
        _load(root)
    assert sorted(decoded) == ["2.png", "3.png"]
    decoded.clear()
    with pytest.raises(DatasetCheckError, match=r"images/3\.png"):
        _load(root)
    assert decoded == ["3.png"]  # a failure is not cached: a fixed file is checked again
    assert list((tmp_path / "cache" / "image-check").glob("*.json"))


@pytest.mark.parametrize(
    ("image_id", "shown"),
    [
        (2**70, r"1180591620717411303424; expected an integer in 0\.\.2\*\*63-1"),
        (2**63, r"9223372036854775808; expected an integer in 0\.\.2\*\*63-1"),
        (-1, r"-1; expected an integer in 0\.\.2\*\*63-1"),
        (True, r"True \(type bool\)"),
        (1.0, r"1\.0 \(type float\)"),
    ],
)
def test_image_id_outside_int64_or_not_an_integer_fails_naming_the_value(
    tmp_path, write_coco, image_id, shown
):
    root = write_coco(
        tmp_path,
        images=[_image(1), _image(image_id, name="big.png")],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
    )
    with pytest.raises(DatasetCheckError, match=rf"images\[1\] has id {shown}"):
        _load(root)


def test_annotation_and_category_ids_outside_int64_fail_naming_the_value(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1)],
        annotations=[_ann(1, 1, [1, 1, 4, 4]), _ann(2**70, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
    )
    with pytest.raises(DatasetCheckError, match=r"annotations\[1\] has id 1180591620717411303424"):
        _load(root)
    root = write_coco(
        tmp_path / "c",
        images=[_image(1)],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=[*CATEGORIES, {"id": -3, "name": "minus"}],
    )
    with pytest.raises(DatasetError, match=r"categories\[3\] has id -3; expected an integer"):
        _load(root)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            '{"images": [], "annotations": ' + "[" * 100_000 + "]" * 100_000 + "}",
            r"nests arrays/objects too deeply to parse \(deeper than 500 levels at line 1 "
            r"column 530\)",
        ),
        (
            '{"images": [{"id": 1,\n"width": ' + "7" * 5000 + '}], "categories": []}',
            r"number too long to parse: a 5000-digit integer at line 2 column 10",
        ),
        (
            '{"images": [], "categories": [1]}',
            r"categories\[0\] is 1 \(type int\); expected an object with 'id' and 'name'",
        ),
        (
            '{"images": [], "categories": [{"id": 1, "name": [[["x"]]]}]}',
            r"category 1 has name \[\[\[.*\]\]\]; expected a string",
        ),
    ],
    ids=["deep nesting", "5000-digit integer", "category not an object", "name not a string"],
)
def test_malformed_annotation_files_fail_with_a_dataset_error_naming_the_place(
    tmp_path, document, message
):
    (tmp_path / "annotations.json").write_text(document)
    with pytest.raises(DatasetError, match=message):
        _load(tmp_path)


def test_huge_numbers_and_names_are_named_briefly_not_crashed_on(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1), {"id": 2, "file_name": "x" * 5000, "width": 4, "height": 4}],
        annotations=[_ann(1, 1, [1, 1, 4, 4]), _ann(2, 1, [1, 1, 10**400, 4], area=10**400)],
        categories=CATEGORIES,
        pixels={"x" * 5000: None},
    )
    with pytest.raises(DatasetCheckError) as error:
        _load(root)
    report = error.value.report
    assert (report.missing_files, report.malformed_entries) == (1, 1)
    assert len(str(error.value)) < 1500  # the 5000-character name and 400-digit int are cut


def _mutated_documents(rng, base, count):
    """Random values of every JSON type put at random places of a valid COCO document."""
    values = [None, True, 0, -1, 2**63, 2**70, 10**400, 1.5, float("nan"), float("inf"), "",
              "../x.png", "x" * 300, "\x00", [], [1], [[[]]], {}, {"id": 1}, [1, 2, 3, 4],
              [1e308, 1e308, 1e308, 1e308]]  # fmt: skip

    def places(node, path=()):
        if path:
            yield path
        if isinstance(node, dict | list):
            for key, child in node.items() if isinstance(node, dict) else enumerate(node):
                yield from places(child, (*path, key))

    for _ in range(count):
        document = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 3)):
            *parents, last = rng.choice(list(places(document)))
            holder = document
            for key in parents:
                holder = holder[key]
            if rng.random() < 0.85:
                holder[last] = json.loads(json.dumps(rng.choice(values)))
            elif isinstance(holder, dict):
                del holder[last]
            else:
                holder.append(json.loads(json.dumps(holder[last])))
        yield document


def test_mutated_annotation_files_load_or_raise_a_dataset_error(tmp_path, write_coco):
    import random

    root = write_coco(
        tmp_path,
        images=[_image(1, 8, 6), _image(2, 8, 6)],
        annotations=[_ann(1, 1, [1, 1, 3, 3]), _ann(2, 2, [0, 0, 4, 2], iscrowd=1)],
        categories=CATEGORIES,
    )
    base = json.loads((root / "annotations.json").read_text())
    escaped = []
    for case, document in enumerate(_mutated_documents(random.Random(10), base, 120)):
        (root / "annotations.json").write_text(json.dumps(document))
        try:
            _load(root)
        except DatasetError:
            continue
        except Exception as error:  # collecting every escape is the point
            escaped.append(f"case {case}: {type(error).__name__}: {error}"[:300])
    assert not escaped, "\n".join(escaped)


def test_cli_check_decodes_with_the_given_number_of_workers(tmp_path, write_coco, capsys):
    from cli.main import main

    root = write_coco(
        tmp_path, images=[_image(1)], annotations=[_ann(1, 1, [1, 1, 4, 4])], categories=CATEGORIES
    )
    (root / "images/1.png").write_bytes(_truncated_png())
    assert main(["data", "check", str(root), "--workers", "2"]) == 1
    assert "truncated or corrupt image data" in capsys.readouterr().err


def test_a_corrupt_image_check_cache_is_ignored_and_rewritten(tmp_path, write_coco, caplog):
    root = write_coco(
        tmp_path / "ds",
        images=[_image(1)],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
    )
    _load(root)
    (cache,) = (tmp_path / "cache" / "image-check").glob("*.json")
    cache.write_text('{"header": ' + "[" * 5000)
    with caplog.at_level("WARNING", logger="training._image_check"):
        assert _load(root).image_ids == [1]
    assert "ignoring the image check cache" in caplog.text
    assert json.loads(cache.read_text())["entries"]
