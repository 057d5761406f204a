"""``detstack train``: its options, and the handler that builds one :class:`TrainConfig`.

Registered by :func:`training._cli.register`. Options left out take the defaults of the chosen
``--model``: the ``quickstart`` model uses :data:`training.train.QUICKSTART` (tuned to learn
the synthetic shapes on a CPU in minutes), every other model the :class:`TrainConfig` defaults
and COCO-pretrained weights.

Example:
    $ detstack data synth data/shapes --images 600
    $ detstack train data/shapes --model quickstart --output runs/shapes
    $ detstack train s3://bucket/coco --epochs 12 --batch-size 4 --output runs/coco
    $ detstack train data/shapes --model quickstart --output runs/shapes --resume
    $ torchrun --nproc-per-node 2 -m cli.main train data/coco --epochs 12
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

_RESUME_LAST = "last"
#: Epochs when neither --epochs nor a model preset says otherwise (the seed's N_EPOCHS scale).
_DEFAULT_EPOCHS = 10


class _DefaultsFormatter(argparse.HelpFormatter):
    """Shows ``(default: X)`` for options with a fixed default; preset-dependent ones say theirs."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def register_train(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detstack train`` to ``subparsers``."""
    from training.engine import COCO_METRICS
    from training.models import ARCHITECTURES
    from training.train import QUICKSTART, TrainConfig

    general = TrainConfig(dataset="", epochs=_DEFAULT_EPOCHS)

    def defaults(name: str) -> str:
        quick, other = getattr(QUICKSTART, name), getattr(general, name)
        if quick == other:
            return f" (default: {quick})"
        return f" (default: {other}; quickstart: {quick})"

    parser = subparsers.add_parser(
        "train",
        help="fine-tune a Faster R-CNN on a COCO dataset (local folder or s3://)",
        description=(
            "Check the dataset and print its report, hold out a validation split, train with "
            "SGD (warmup, step or cosine schedule, horizontal flips, aspect-ratio batches), "
            "evaluate with pycocotools after each epoch, and write OUTPUT/last.pt (every "
            "epoch), OUTPUT/best.pt (best --best-metric) and OUTPUT/metrics.jsonl. Options "
            "not given take the defaults of --model: 'quickstart' uses the tuned quickstart "
            "preset, other models the general defaults shown. Several GPUs or machines: start "
            "it with torchrun (see docs/training.md)."
        ),
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument(
        "dataset",
        metavar="DATASET",
        help="COCO dataset: a folder with annotations.json and images, a .json file, or "
        "s3://bucket/prefix",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs to train (quickstart: {QUICKSTART.epochs}; others: {_DEFAULT_EPOCHS})",
    )
    parser.add_argument("--output", default="runs/train", help="run folder for checkpoints")

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        choices=ARCHITECTURES,
        default="fasterrcnn_resnet50_fpn",
        help="architecture ('quickstart': ResNet-18-FPN at 128 px for CPUs; 'tiny': tests)",
    )
    model.add_argument(
        "--weights",
        default=None,
        help="starting weights of the whole detector: DEFAULT (COCO-pretrained, downloaded "
        "to the torch hub cache), none, or PATH to a .pth state dict or detstack checkpoint "
        "(quickstart/tiny: none)",
    )
    model.add_argument(
        "--weights-backbone",
        default=None,
        help="backbone weights when --weights is none: DEFAULT (ImageNet) or none "
        "(quickstart/tiny: none)",
    )
    model.add_argument(
        "--min-size", type=int, default=None, help="shorter side after resize (model default)"
    )
    model.add_argument(
        "--max-size", type=int, default=None, help="longer side cap after resize (model default)"
    )
    model.add_argument(
        "--trainable-backbone-layers",
        type=int,
        default=None,
        help="backbone stages to train, 0-5 (model default)",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per step per process" + defaults("batch_size"),
    )
    optim.add_argument("--lr", type=float, default=None, help="peak learning rate" + defaults("lr"))
    optim.add_argument(
        "--momentum", type=float, default=None, help="SGD momentum" + defaults("momentum")
    )
    optim.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="SGD weight decay" + defaults("weight_decay"),
    )
    optim.add_argument(
        "--warmup-iters",
        type=int,
        default=None,
        help="steps of linear LR warmup" + defaults("warmup_iters"),
    )
    optim.add_argument(
        "--lr-schedule",
        choices=("cosine", "step"),
        default=None,
        help="LR decay after warmup" + defaults("lr_schedule"),
    )
    optim.add_argument(
        "--lr-steps",
        type=int,
        nargs="+",
        default=None,
        metavar="EPOCH",
        help="epochs where the step schedule multiplies the LR by --lr-gamma "
        "(default: at 2/3 and 8/9 of --epochs)",
    )
    optim.add_argument(
        "--lr-gamma", type=float, default=None, help="step schedule factor" + defaults("lr_gamma")
    )
    optim.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    optim.add_argument(
        "--seed", type=int, default=None, help="seed for split, batches, flips" + defaults("seed")
    )

    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="share of images held out for COCO evaluation (0: none)" + defaults("val_fraction"),
    )
    evaluation.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="evaluate every N epochs (and the last)" + defaults("eval_every"),
    )
    evaluation.add_argument(
        "--best-metric",
        choices=COCO_METRICS,
        default=None,
        help="COCO metric that picks best.pt" + defaults("best_metric"),
    )

    run = parser.add_argument_group("data and devices")
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data loader processes per training process" + defaults("workers"),
    )
    run.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (torchrun: per rank)"
    )
    run.add_argument(
        "--s3-endpoint-url",
        default=None,
        help="endpoint of an S3-compatible store such as MinIO (credentials: AWS env/profile)",
    )
    run.add_argument(
        "--resume",
        nargs="?",
        const=_RESUME_LAST,
        default=None,
        metavar="PATH",
        help="continue a run exactly: from PATH, or from OUTPUT/last.pt when PATH is omitted",
    )
    parser.set_defaults(handler=_run_train)


def build_train_config(args: argparse.Namespace) -> Any:
    """The one :class:`TrainConfig` of a ``detstack train`` command line."""
    from pathlib import Path

    from training.models import ModelConfig
    from training.train import QUICKSTART, TrainConfig

    small = args.model in ("quickstart", "tiny")
    if args.model == "quickstart":
        base = QUICKSTART
    else:
        base = TrainConfig(dataset="", epochs=_DEFAULT_EPOCHS)
    model = ModelConfig(
        architecture=args.model,
        weights=args.weights or ("none" if small else "DEFAULT"),
        weights_backbone=args.weights_backbone or ("none" if small else "DEFAULT"),
        min_size=args.min_size,
        max_size=args.max_size,
        trainable_backbone_layers=args.trainable_backbone_layers,
    )
    overrides: dict[str, Any] = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "warmup_iters": args.warmup_iters,
        "lr_schedule": args.lr_schedule,
        "lr_steps": tuple(args.lr_steps) if args.lr_steps is not None else None,
        "lr_gamma": args.lr_gamma,
        "val_fraction": args.val_fraction,
        "eval_every": args.eval_every,
        "best_metric": args.best_metric,
        "workers": args.workers,
        "seed": args.seed,
    }
    resume = args.resume
    if resume == _RESUME_LAST:
        resume = str(Path(args.output) / "last.pt")
    return replace(
        base,
        dataset=args.dataset,
        output=args.output,
        model=model,
        amp=args.amp,
        device=args.device,
        resume=resume,
        s3_endpoint_url=args.s3_endpoint_url,
        **{name: value for name, value in overrides.items() if value is not None},
    )


def _run_train(args: argparse.Namespace) -> int:
    import os

    from training.coco import DatasetCheckError, format_report
    from training.engine import PER_CATEGORY, format_metric
    from training.figures import CURVE_FILE
    from training.train import train

    config = build_train_config(args)
    quiet = getattr(args, "quiet", False)

    def show_report(report: Any) -> None:
        print(format_report(report), flush=True)

    try:
        result = train(config, on_report=show_report, progress=not quiet)
    except DatasetCheckError as error:
        if os.environ.get("RANK", "0") == "0":
            show_report(error.report)  # every problem found, not only the fatal ones
        raise
    if result.rank != 0:
        return 0  # under torchrun, rank 0 speaks for the run
    if result.history:
        last = result.history[-1]
        val = last.get("val", {})
        scores = ", ".join(
            f"{k} {format_metric(val[k])}" for k in ("AP", "AP50", "AP75") if k in val
        )
        print(f"epoch {last['epoch']}/{config.epochs}: {scores or 'no validation split'}")
        per_category = val.get(PER_CATEGORY) or {}
        if per_category:
            print(
                "AP per category: "
                + ", ".join(
                    f"{entry.get('name', key)} {format_metric(entry.get('AP'))}"
                    for key, entry in per_category.items()
                )
            )
    if result.best_value is not None:
        best = format_metric(result.best_value)
        print(f"best {config.best_metric} {best}: {result.best_checkpoint}")
    print(f"last checkpoint: {result.last_checkpoint}")
    print(f"metrics: {result.output / 'metrics.jsonl'}")
    if (result.output / CURVE_FILE).is_file():
        print(f"training curve: {result.output / CURVE_FILE}")
    return 0
