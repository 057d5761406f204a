"""``detstack export``: a checkpoint becomes the next version of a model in a Triton repository.

Example:
    $ detstack export runs/exp/checkpoint.pt --repository model_repository \\
          --name my-detection-model --samples-from data/shapes
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detstack.contract import DEFAULT_MODEL_NAME


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``subparsers``."""
    from export.onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
    from export.triton_config import ConfigOptions

    defaults = ConfigOptions()
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX as a new version in a Triton model repository",
        description=(
            "Export CHECKPOINT to ONNX (uint8 CHW image in; boxes, scores and dataset category "
            "ids out), check that onnxruntime answers as PyTorch does on sample images of two "
            "sizes and a blank image, then write it as the next version of the model, with "
            "Triton configs for the GPU container (onnxruntime backend) and the embedded CPU "
            "server (python backend), a manifest, samples and warmup data. Nothing is written "
            "when a check fails; an existing version is never overwritten."
        ),
    )
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="checkpoint file")
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        help="Triton model repository folder, created if missing (default: %(default)s)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help=(
            f"model name in the repository (default: {DEFAULT_MODEL_NAME}, or "
            f"{DEFAULT_MODEL_NAME}-int8 with --precision int8: a model name holds one precision)"
        ),
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=(
            f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (default: %(default)s, the highest whose "
            "RoiAlign has a CUDA kernel in every onnxruntime release; from 16 older "
            "onnxruntime releases run RoiAlign on the CPU)"
        ),
    )
    samples = parser.add_mutually_exclusive_group()
    samples.add_argument(
        "--samples-from",
        metavar="DATASET",
        help=(
            "COCO dataset (folder, .json or s3:// URL) whose images become the version's input "
            "samples, parity-gate images and Triton warmup data (default: synthetic images)"
        ),
    )
    samples.add_argument(
        "--sample-images",
        type=Path,
        nargs="+",
        metavar="IMAGE",
        default=(),
        help="image files to use as samples instead of dataset images",
    )
    parser.add_argument(
        "--sample-count",
        type=int,
        default=3,
        help="how many dataset or synthetic samples to keep (default: %(default)s)",
    )
    parser.add_argument(
        "--s3-endpoint-url",
        metavar="URL",
        help="endpoint of an S3-compatible store (MinIO, ...) for --samples-from s3://...",
    )
    precision = parser.add_argument_group("precision (INT8: quantized, then the accuracy gate)")
    precision.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="fp32",
        help=(
            "fp32 (default), or int8: static QDQ quantization calibrated on training-split "
            "images, written only if its COCO AP on the validation split of the checkpoint's "
            "training run is within --max-ap-drop of the FP32 graph's (FP16/BF16 are not "
            "offered: onnxruntime's CPU provider runs them no faster)"
        ),
    )
    precision.add_argument(
        "--calibration-images",
        type=int,
        default=32,
        metavar="N",
        help="int8: training-split images to calibrate on (default: %(default)s)",
    )
    precision.add_argument(
        "--max-ap-drop",
        type=float,
        default=1.0,
        metavar="POINTS",
        help="int8: most COCO AP points (AP x 100) the INT8 graph may lose (default: %(default)s)",
    )
    precision.add_argument(
        "--accuracy-images",
        type=int,
        default=None,
        metavar="N",
        help="int8: score on at most N validation images (default: all of them)",
    )
    gpu = parser.add_argument_group("GPU container flavour (configs/gpu.pbtxt, config.pbtxt)")
    gpu.add_argument(
        "--tensorrt",
        action="store_true",
        help="run the graph through onnxruntime's TensorRT accelerator, with an engine cache",
    )
    gpu.add_argument(
        "--tensorrt-precision",
        choices=("fp16", "fp32"),
        default="fp16",
        help="TensorRT compute precision (default: %(default)s; needs --tensorrt)",
    )
    gpu.add_argument(
        "--tensorrt-cache-dir",
        default=defaults.tensorrt_cache_dir,
        help=(
            "where TensorRT keeps built engines inside the container; mount a volume there to "
            "keep them across restarts (default: %(default)s)"
        ),
    )
    gpu.add_argument(
        "--gpu-instances",
        type=int,
        default=defaults.gpu_instances,
        help="model instances per GPU (default: %(default)s)",
    )
    gpu.add_argument(
        "--gpu-decode",
        action="store_true",
        help=(
            "make the GPU flavour take the image file and decode it on the GPU: an ensemble of "
            "the sibling models NAME-gate (python, CPU: base64 or raw bytes, format allow-list "
            "JPEG/PNG/BMP/TIFF/WEBP, --max-file-bytes), NAME-decode (DALI: nvJPEG, CPU "
            "decoders for the other formats) and NAME-detector (onnxruntime on the GPU; "
            "pixel clients send it image [1,3,H,W]). Not checked before decoding there: the "
            "pixel limit and image sides. Untested on a GPU by detstack (no GPU, container or "
            "DALI backend where it was written); the embedded flavour is unchanged"
        ),
    )
    gpu.add_argument(
        "--max-file-bytes",
        type=int,
        default=defaults.max_file_bytes,
        help="with --gpu-decode: larger image files are refused with HTTP 400 "
        "(default: %(default)s)",
    )
    embedded = parser.add_argument_group("embedded CPU flavour (configs/embedded.pbtxt)")
    embedded.add_argument(
        "--cpu-instances",
        type=int,
        default=defaults.cpu_instances,
        help="model instances, each with its own onnxruntime session; two let one request "
        "decode while another runs the detector (default: %(default)s)",
    )
    embedded.add_argument(
        "--draft-decode",
        action="store_true",
        help="decode JPEG files at the smallest DCT scale that still covers twice the model's "
        "working size: several times faster for large photos, but measured to cost up to 0.9 "
        "COCO AP (benchmarks/results/README.md), so off by default",
    )
    embedded.add_argument(
        "--min-image-side",
        type=int,
        default=defaults.min_image_side,
        help="smaller images are refused with HTTP 400 (default: %(default)s)",
    )
    embedded.add_argument(
        "--max-image-side",
        type=int,
        default=defaults.max_image_side,
        help="larger images are refused with HTTP 400 (default: %(default)s)",
    )
    embedded.add_argument(
        "--max-image-pixels",
        type=int,
        default=defaults.max_image_pixels,
        help="images with more pixels are refused with HTTP 400 (default: %(default)s)",
    )
    parser.set_defaults(handler=_run_export)


def _default_name(precision: str) -> str:
    return DEFAULT_MODEL_NAME if precision == "fp32" else f"{DEFAULT_MODEL_NAME}-{precision}"


def _run_export(args: argparse.Namespace) -> int:
    from detstack.errors import ConfigError
    from export import ConfigOptions, ExportConfig, export_checkpoint

    if args.tensorrt_precision != "fp16" and not args.tensorrt:
        raise ConfigError("--tensorrt-precision needs --tensorrt")
    config = ExportConfig(
        repository=args.repository,
        name=args.name or _default_name(args.precision),
        opset=args.opset,
        samples_from=args.samples_from,
        sample_images=tuple(args.sample_images),
        sample_count=args.sample_count,
        precision=args.precision,
        calibration_images=args.calibration_images,
        max_ap_drop=args.max_ap_drop,
        accuracy_images=args.accuracy_images,
        s3_endpoint_url=args.s3_endpoint_url,
        serving=ConfigOptions(
            tensorrt=args.tensorrt,
            tensorrt_precision=args.tensorrt_precision.upper(),
            tensorrt_cache_dir=args.tensorrt_cache_dir,
            gpu_instances=args.gpu_instances,
            cpu_instances=args.cpu_instances,
            draft_decode=args.draft_decode,
            gpu_decode=args.gpu_decode,
            max_file_bytes=args.max_file_bytes,
            min_image_side=args.min_image_side,
            max_image_side=args.max_image_side,
            max_image_pixels=args.max_image_pixels,
        ),
    )
    result = export_checkpoint(args.checkpoint, config)
    graph = result.graph
    print(f"exported version {result.version} of {config.name}: {result.version_dir}")
    print(
        f"  graph: opset {graph.opset}, {graph.nodes} nodes, RoI pooling by "
        + (
            f"{graph.roi_pooling} ({', '.join(sorted(set(graph.roi_align)))})"
            if graph.roi_align
            else graph.roi_pooling
        )
    )
    print(f"  configs: {', '.join(str(p) for p in result.configs)}")
    print("  parity gate (PyTorch vs onnxruntime):")
    for line in result.validation.format_table().splitlines():
        print(f"    {line}")
    if result.precision is not None:
        print(f"  {result.precision.format_line()}")
    print(f"serve it: detstack serve --repository {config.repository}")
    return 0
