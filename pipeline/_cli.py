"""``detstack pipeline``: the whole job in one command (registered by :mod:`cli.main`).

Example:
    $ detstack pipeline                                   # the offline quickstart default
    $ detstack pipeline --config pipeline.yaml --epochs 12 --keep-serving
    $ detstack pipeline --config runs/20260101-120000/pipeline.yaml   # retrain: next version
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from detstack.contract import DEFAULT_MODEL_NAME
from detstack.tokens import TOKEN_ENV

# Flags that override one key of the configuration file: (flag, dotted key, type, help).
_OVERRIDES: tuple[tuple[str, str, Any, str], ...] = (
    ("--dataset", "dataset.source", str, "COCO dataset folder, .json file or s3://bucket/prefix"),
    ("--s3-endpoint-url", "dataset.s3_endpoint_url", str, "S3-compatible store (MinIO) URL"),
    (
        "--model",
        "model.architecture",
        str,
        "architecture: quickstart, tiny, fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2, "
        "fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_mobilenet_v3_large_320_fpn",
    ),
    ("--weights", "model.weights", str, "DEFAULT (COCO-pretrained, downloads), none, or a .pth"),
    ("--epochs", "train.epochs", int, "training epochs"),
    ("--batch-size", "train.batch_size", int, "images per training step"),
    ("--lr", "train.lr", float, "base learning rate"),
    ("--name", "name", str, "model name in the repository (the name Triton serves)"),
    ("--repository", "repository", str, "Triton model repository to add the version to"),
    ("--runs", "runs", str, "parent folder of the run folders"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``subparsers``."""
    parser = subparsers.add_parser(
        "pipeline",
        help="data check, train, evaluate, export, serve, predict, benchmark and report",
        description=(
            "Run the whole job from one YAML configuration into one run folder "
            "(<runs>/<UTC timestamp>/): check the dataset, train, evaluate, export a new "
            "validated model version, serve it with the embedded Triton, run a smoke "
            "prediction and a short benchmark, and write a report. With no arguments it runs "
            "the built-in offline default (synthetic shapes, the quickstart model). The "
            "configuration used is saved in the run folder and beside the model version: "
            "rerun it with --config to retrain and add the next version."
        ),
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML configuration, merged over the built-in default (see --print-config)",
    )
    for flag, key, kind, text in _OVERRIDES:
        parser.add_argument(flag, type=kind, default=None, help=f"{text} (sets {key})")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any key of the configuration, e.g. --set train.lr=0.01 (repeatable)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="write this run into this new or empty folder instead of <runs>/<timestamp>",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=(
            f"API token the served model requires (default: ${TOKEN_ENV}, else a "
            "one-time random token for the run's own server). Prefer the environment "
            "variable: a command line is visible to other local users. Never saved."
        ),
    )
    parser.add_argument(
        "--keep-serving",
        action="store_true",
        help="after the report, keep Triton and the demo page running until Ctrl-C",
    )
    parser.add_argument(
        "--demo-port",
        type=int,
        default=8080,
        help="port of the demo page with --keep-serving (default: %(default)s; 0: any)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration (defaults, file, overrides) and exit",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (for logs and CI)"
    )
    parser.set_defaults(handler=_run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline import parse_override

    overrides: dict[str, Any] = {}
    for flag, key, _, _ in _OVERRIDES:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            overrides[key] = value
    for text in args.set:
        key, value = parse_override(text)
        overrides[key] = value
    return overrides


def _run(args: argparse.Namespace) -> int:
    from pipeline import config_to_yaml, load_pipeline_config, run_pipeline

    config = load_pipeline_config(args.config, _overrides(args))
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    from serve import load_token

    token = load_token(args.token)
    generated = None
    if token is None and args.keep_serving:
        # Triton stays up for the user, who needs the token for the demo page: make one and
        # show it once (it is never written to a file).
        import secrets

        from serve import ApiToken

        generated = secrets.token_urlsafe(24)
        token = ApiToken(generated, source="a token generated for this run")
    keep = _keep_serving(config, args, generated) if args.keep_serving else None
    result = run_pipeline(
        config,
        token=token,
        run_dir=args.run_dir,
        progress=not args.no_progress,
        while_serving=keep,
    )
    if not args.keep_serving:
        _print_summary(result, config, served=False)
    return 0


def _print_summary(result: Any, config: Any, *, served: bool) -> None:
    from training.engine import format_metric

    record = result.record
    metrics = (record.get("training") or {}).get("metrics") or {}
    figures = ", ".join(f"{k} {format_metric(metrics[k])}" for k in ("AP", "AP50") if k in metrics)
    print()
    print(
        f"pipeline finished in {record.get('seconds', 0):.0f} s"
        + (f" ({figures})" if figures else "")
    )
    print(f"  report:        {result.report_html}")
    print(f"                 {result.report_markdown}")
    print(f"  model version: {config.name} version {result.model_version} in {result.version_dir}")
    print(f"  run folder:    {result.run_dir}  (pipeline.yaml re-runs it: next version)")
    if not served:
        print("  serve it and open the demo page:")
        print(
            f"    detstack serve --repository {config.repository}   # token: --token or "
            f"${TOKEN_ENV}"
        )
        model = "" if config.name == DEFAULT_MODEL_NAME else f" --model {config.name}"
        print(f"    detstack demo{model}   # then open http://127.0.0.1:8080/")


def _keep_serving(config: Any, args: argparse.Namespace, generated: str | None) -> Any:
    def wait(server: Any, result: Any) -> None:
        import threading

        from demo import DemoConfig, create_app

        _print_summary(result, config, served=True)
        demo = create_app(
            DemoConfig(
                port=args.demo_port,
                default_endpoint=f"grpc://{server.endpoints.grpc}",
                default_model=config.name,
            )
        )
        thread = threading.Thread(target=demo.serve_forever, name="demo", daemon=True)
        thread.start()
        try:  # Ctrl-C may come as soon as the last line is out: be inside the try by then
            print(f"  Triton:        HTTP {server.endpoints.http}  gRPC {server.endpoints.grpc}")
            print(f"  demo page:     {demo.url}")
            if generated is not None:
                print(
                    f"  API token:     {generated}  (generated for this run; choose your own "
                    f"with ${TOKEN_ENV})"
                )
            print("  Ctrl-C stops Triton and the demo page", flush=True)
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping", flush=True)
        finally:
            demo.shutdown()
            demo.server_close()

    return wait
