"""Reproduce the client README's benchmark table: serve a model with Triton, run ``detstack bench``.

It builds a checkpoint of the chosen architecture with untrained weights (the compute is the
same as a trained model's; the number of boxes after NMS may differ), exports it into a fresh
model repository, starts the embedded Triton server on free loopback ports, and runs
``detstack bench`` on a synthetic COCO dataset (written with ``detstack data synth``) against
it, with the eager PyTorch baseline on the same checkpoint. Everything lives in a temporary
folder except the bench results (``--out``).

With ``--checkpoint`` it serves that (trained) checkpoint instead; with ``--photos DIR`` it
benchmarks on those image files (real photographs), optionally re-encoded as ``--photo-size``
JPEGs; ``--wire`` and ``--protocol`` choose the settings measured side by side.
``--level-merge scatter`` exports the graph as it was before :mod:`export._roi_merge`;
``--normalise early`` as it was before :mod:`export._late_normalise`; ``--precision int8``
serves the INT8 graph (calibrated on the synthetic dataset, through export's accuracy gate).

Example:
    $ .venv/bin/python benchmarks/client_serving.py --architecture quickstart \\
          --requests 100 --concurrency 1 2 4 --out bench-results/quickstart
    $ .venv/bin/python benchmarks/client_serving.py --checkpoint runs/exp/checkpoint.pt \\
          --photos photos/ --photo-size 4000x3000 --concurrency 1 --out bench-results/12mp
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import unittest.mock
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="quickstart", help="ModelConfig architecture")
    parser.add_argument("--images", type=int, default=16, help="synthetic images (default 16)")
    parser.add_argument("--image-size", type=int, default=256, help="synthetic image side")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument(
        "--background-bias",
        type=float,
        default=0.0,
        help="added to the untrained classifier's background logit. Untrained ResNet-50 "
        "weights score a blank image with 100 near-tied boxes that the export parity gate "
        "cannot pair one to one; 1000 makes the model keep no box (backbone, RPN and box head "
        "compute unchanged, only the final NMS becomes trivial)",
    )
    parser.add_argument(
        "--box-score-thresh",
        type=float,
        default=0.05,
        help="the model's own score threshold; untrained weights give many near-tied boxes "
        "that the export parity gate may refuse, a higher threshold (0.5) avoids them",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="serve this checkpoint (default: untrained)"
    )
    parser.add_argument(
        "--photos", type=Path, default=None, help="benchmark on these image files (a folder)"
    )
    parser.add_argument("--photo-size", default=None, help="re-encode them as WxH JPEGs first")
    parser.add_argument("--wire", nargs="+", default=["encoded", "pixels"])
    parser.add_argument("--protocol", nargs="+", default=["grpc", "http"])
    parser.add_argument(
        "--draft-decode",
        action="store_true",
        help="export with the reduced-DCT-scale JPEG decode on (off by default: it costs AP)",
    )
    parser.add_argument(
        "--server-resize",
        choices=["on", "off"],
        default="on",
        help="off: the served model leaves the resize to the graph (config parameter "
        "server_resize 0, how it served before the server-side resize), to compare the two",
    )
    parser.add_argument(
        "--level-merge",
        choices=["gather", "scatter"],
        default="gather",
        help="scatter: export the FPN RoIAlign level merge as torchvision writes it (one "
        "full-size ScatterElements per level, how it was exported before export._roi_merge), "
        "to compare the two graphs",
    )
    parser.add_argument(
        "--normalise",
        choices=["late", "early"],
        default="late",
        help="early: export the graph normalising the full-size image before the resize, as "
        "torchvision's transform does (how it was exported before export._late_normalise)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        default="fp32",
        help="int8: export and serve the statically quantized graph (export --precision int8)",
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        help="the checkpoint's training dataset: export takes its samples from it, and "
        "--precision int8 calibrates on its training split and scores its validation split",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from cli.main import main as detstack
    from export import ConfigOptions, ExportConfig, export_checkpoint
    from serve import ServeConfig, TritonServer

    with tempfile.TemporaryDirectory(prefix="detstack-bench-") as scratch:
        root = Path(scratch)
        dataset = root / "dataset"
        status = detstack(
            [
                "data",
                "synth",
                str(dataset),
                "--images",
                str(args.images),
                "--size",
                str(args.image_size),
            ]
        )
        if status:
            return status
        if args.checkpoint is not None:
            checkpoint = args.checkpoint
        else:
            checkpoint = _untrained_checkpoint(args, root)
        repository = root / "repository"
        with _level_merge(args.level_merge), _normalise(args.normalise):
            exported = export_checkpoint(
                checkpoint,
                ExportConfig(
                    repository=repository,
                    samples_from=str(args.dataset or dataset),
                    serving=ConfigOptions(draft_decode=args.draft_decode),
                    precision=args.precision,
                ),
            )
        if args.server_resize == "off":
            _set_embedded_parameter(repository, "server_resize", "0")
        serve_config = ServeConfig(
            repository=str(repository),
            host="127.0.0.1",
            http_port=0,
            grpc_port=0,
            metrics_port=0,
            startup_timeout_s=300.0,
        )
        with TritonServer(serve_config) as server:
            source = (
                [str(args.photos)]
                if args.photos
                else ["--dataset", str(dataset), "--max-images", str(args.images)]
            )
            command = [
                "bench",
                *source,
                "--grpc-url",
                server.endpoints.grpc,
                "--http-url",
                server.endpoints.http,
                "--protocol",
                *args.protocol,
                "--wire",
                *args.wire,
                "--concurrency",
                *map(str, args.concurrency),
                "--requests",
                str(args.requests),
                "--warmup",
                str(args.warmup),
                "--max-seconds",
                str(args.max_seconds),
                "--checkpoint",
                str(checkpoint),
                "--model",
                exported.model_dir.name,
                "--out",
                str(args.out),
            ]
            if args.photo_size:
                command += ["--photo-size", args.photo_size]
            if args.torch_threads:
                command += ["--torch-threads", str(args.torch_threads)]
            return detstack(command)


def _level_merge(choice: str) -> contextlib.AbstractContextManager[object]:
    """For ``scatter``, export with torchvision's own level merge (the graph before the change)."""
    if choice == "gather":
        return contextlib.nullcontext()
    return unittest.mock.patch("export.onnx_export.cheap_level_merge", contextlib.nullcontext)


def _normalise(choice: str) -> contextlib.AbstractContextManager[object]:
    """For ``early``, export normalising before the resize (the graph before the change)."""
    if choice == "late":
        return contextlib.nullcontext()
    return unittest.mock.patch(
        "export.onnx_export.normalise_after_resize", lambda adapter: contextlib.nullcontext()
    )


def _set_embedded_parameter(repository: Path, key: str, value: str) -> None:
    """Set a config parameter of every model's embedded config (through Triton's protobuf)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    for path in repository.glob("*/configs/embedded.pbtxt"):
        config = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
        config.parameters[key].string_value = value
        path.write_text(text_format.MessageToString(config), encoding="utf-8")


def _untrained_checkpoint(args: argparse.Namespace, root: Path) -> Path:
    """A checkpoint of ``args.architecture`` with untrained weights (same compute as trained)."""
    from training.categories import CategoryMap
    from training.checkpoint import Checkpoint, save_checkpoint
    from training.models import ModelConfig, build_model

    categories = CategoryMap((0, 3, 7), ("circle", "square", "triangle"))
    config = ModelConfig(
        architecture=args.architecture,
        weights="none",
        weights_backbone="none",
        box_score_thresh=args.box_score_thresh,
    ).for_rebuild()
    model = build_model(config, categories.num_classes).eval()
    if args.background_bias:
        import torch

        with torch.no_grad():
            model.roi_heads.box_predictor.cls_score.bias[0] += args.background_bias
    return save_checkpoint(
        Checkpoint(model_config=config, category_map=categories, model_state=model.state_dict()),
        root / "checkpoint.pt",
    )


if __name__ == "__main__":
    raise SystemExit(main())
