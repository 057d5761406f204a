"""Subcommands of the ``training`` stage (registered by :mod:`cli.main`).

``detstack data synth``: write a synthetic COCO dataset; ``detstack data check``: load and check
a dataset and print its report. Each subcommand has its own ``_register_*`` function, called by
:func:`register`; a new subcommand (``train``) adds one more function and one more call.

Example:
    $ detstack data synth data/shapes --images 200 --seed 0
    $ detstack data check data/shapes
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``subparsers``."""
    _register_data(subparsers)
    _register_train(subparsers)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    from training._train_cli import register_train

    register_train(subparsers)


def _register_data(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="create or check COCO datasets",
        description="Create a synthetic COCO dataset, or check a COCO dataset before training.",
    )
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    _register_synth(data_commands)
    _register_check(data_commands)


# --------------------------------------------------------------------------- data synth


def _register_synth(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a deterministic synthetic COCO dataset of coloured shapes",
        description=(
            "Write OUT/annotations.json and OUT/images/*.png: noisy backgrounds with 1-4 "
            "coloured shapes each (categories circle=0, square=3, triangle=7: non-contiguous "
            "ids, one of them 0) and a few images with no objects. The same arguments always "
            "write byte-identical files."
        ),
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="dataset folder to write")
    parser.add_argument(
        "--images", type=int, default=200, help="number of images (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed, same files (default: 0)"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=128,
        help="shorter image side in pixels (default: %(default)s)",
    )
    parser.add_argument(
        "--aspect-ratios",
        type=float,
        nargs="+",
        default=[1.0],
        metavar="RATIO",
        help=(
            "width/height ratios each image draws from, e.g. 1.0 1.33 0.75 for mixed landscape "
            "and portrait images (default: 1.0, square images)"
        ),
    )
    parser.add_argument(
        "--negative-fraction",
        type=float,
        default=0.05,
        help="share of images with no objects (default: %(default)s)",
    )
    parser.add_argument(
        "--max-objects",
        type=int,
        default=4,
        help="most objects per image (at least 1 on non-negative images; default: %(default)s)",
    )
    parser.add_argument(
        "--min-object-size",
        type=int,
        default=16,
        metavar="PX",
        help="smallest object side in pixels (default: %(default)s)",
    )
    parser.add_argument(
        "--max-object-fraction",
        type=float,
        default=0.4,
        metavar="F",
        help="largest object side as a fraction of the shorter image side (default: %(default)s)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=18.0,
        metavar="STD",
        help="standard deviation of the background noise, 0-255 scale (default: %(default)s)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help=(
            "when > 0, also write OUT/annotations_train.json and OUT/annotations_val.json "
            "splitting the images deterministically (default: 0, no split files)"
        ),
    )
    parser.set_defaults(handler=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from training.synth import SynthConfig, write_synthetic_dataset

    config = SynthConfig(
        images=args.images,
        seed=args.seed,
        size=args.size,
        aspect_ratios=tuple(args.aspect_ratios),
        negative_fraction=args.negative_fraction,
        max_objects=args.max_objects,
        min_object_size=args.min_object_size,
        max_object_fraction=args.max_object_fraction,
        noise=args.noise,
        val_fraction=args.val_fraction,
    )
    summary = write_synthetic_dataset(args.out, config, progress=True)
    counts = ", ".join(f"{name} {count}" for name, count in summary.per_category.items())
    print(
        f"wrote {summary.images} images ({summary.negatives} without objects) and "
        f"{summary.annotations} objects ({counts}) to {summary.root}"
    )
    for path in (summary.annotations_path, *summary.split_paths):
        print(f"  {path}")
    return 0


# --------------------------------------------------------------------------- data check


def _register_check(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check a COCO dataset and print its report",
        description=(
            "Load a COCO dataset the way `detstack train` does, check every annotation and "
            "decode every image (in parallel; results cached by file size and time, so a rerun "
            "only decodes what changed), and print the report: images, annotations, categories "
            "and the count of each problem. Exit status 0 when the dataset can be trained on, "
            "1 (with the problems named) otherwise."
        ),
    )
    add_dataset_arguments(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the report as JSON instead of a table",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help=(
            "threads decoding the images (default: the CPU count); every image is decoded "
            "once, and a rerun decodes only new or changed files (results cached under "
            "--cache-dir)"
        ),
    )
    parser.set_defaults(handler=_run_check)


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every command reading a dataset takes (``data check``, ``train``)."""
    parser.add_argument(
        "dataset",
        metavar="DATASET",
        help=(
            "a dataset folder (annotations.json or annotations/<name>.json, plus images), the "
            "path of a COCO .json file, or the same on S3 as s3://bucket/prefix"
        ),
    )
    parser.add_argument(
        "--s3-endpoint-url",
        metavar="URL",
        default=None,
        help=(
            "endpoint of an S3-compatible store such as MinIO (default: AWS, or "
            "AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL); credentials come from the standard AWS "
            "variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE)"
        ),
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=(
            "where objects read from S3 and the image check's results are cached (default: "
            "$DETSTACK_CACHE_DIR or ~/.cache/detstack)"
        ),
    )
    parser.add_argument(
        "--images-dir",
        default=None,
        metavar="DIR",
        help=(
            "folder of the images, relative to the dataset root, when it is not found "
            "automatically (the root, images/, or the split name such as train2017/)"
        ),
    )


def _run_check(args: argparse.Namespace) -> int:
    import json

    from training.coco import DatasetCheckError, format_report, load_dataset

    try:
        dataset = load_dataset(
            args.dataset,
            s3_endpoint_url=args.s3_endpoint_url,
            cache_dir=args.cache_dir,
            images_dir=args.images_dir,
            progress=True,
            workers=args.workers,
        )
    except DatasetCheckError as error:
        report = error.report
        print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
        raise
    report = dataset.report
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0
