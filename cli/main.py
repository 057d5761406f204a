"""The ``detstack`` command line: one console script, one subcommand per job.

Each stage package owns its subcommands in a private ``_cli`` module with a
``register(subparsers)`` function; this module only assembles them, sets up logging, and turns
every :class:`~detstack.errors.DetstackError` into a one-line message and a non-zero exit code.

Example:
    $ detstack data synth data/shapes --images 200 --seed 0
    $ detstack train data/shapes --epochs 8
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from detstack import __version__
from detstack.errors import DetstackError

__all__ = ["build_parser", "main"]

logger = logging.getLogger("detstack")

#: Exit status for an error detstack raised on purpose (bad input, failed stage).
EXIT_ERROR = 1
#: Exit status after Ctrl-C, as shells expect (128 + SIGINT).
EXIT_INTERRUPTED = 130


def _register_all(subparsers: argparse._SubParsersAction) -> None:
    # Imported here so `detstack --help` stays fast and each stage's heavy imports (torch,
    # tritonclient) happen only inside the handler that needs them.
    from bench import _cli as bench_cli
    from client import _cli as client_cli
    from client import _score_cli as score_cli
    from demo import _cli as demo_cli
    from export import _cli as export_cli
    from pipeline import _cli as pipeline_cli
    from serve import _cli as serve_cli
    from serve import _k8s_cli as deploy_cli
    from training import _cli as training_cli

    for module in (
        training_cli,
        export_cli,
        serve_cli,
        client_cli,
        bench_cli,
        pipeline_cli,
        demo_cli,
    ):
        module.register(subparsers)
    deploy_cli.register(subparsers)
    score_cli.register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="detstack",
        description=(
            "Fine-tune Faster R-CNN on a COCO dataset, export it to a Triton model repository, "
            "serve it, and call it with the base64 DataFrame protocol."
        ),
    )
    parser.add_argument("--version", action="version", version=f"detstack {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages (default: info)"
    )
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="log warnings and errors only"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _register_all(subparsers)
    return parser


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        return int(args.handler(args) or 0)
    except DetstackError as error:
        print(f"detstack {args.command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"detstack {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
