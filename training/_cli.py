"""Subcommands of the ``training`` stage (registered by :mod:`detstack.cli`).

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
    """Placeholder until the COCO loader lands (see training/coco.py)."""
