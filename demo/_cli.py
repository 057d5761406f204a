"""``detstack demo``: serve the demo page until Ctrl-C (registered by :mod:`cli.main`).

Example:
    $ detstack demo --port 8080 --endpoint grpc://127.0.0.1:8001
    $ detstack demo --host 0.0.0.0 --allow-host demo.lab.example --allow-endpoint 10.0.0.0/8:8001
"""

from __future__ import annotations

import argparse

from demo._config import DEFAULT_ALLOWED_ENDPOINTS
from detstack.contract import DEFAULT_MODEL_NAME


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``subparsers``."""
    parser = subparsers.add_parser(
        "demo",
        help="serve a web page to try a served model on an uploaded image",
        description=(
            "Serve a web page with fields for the API endpoint, API token, an image and a "
            "score threshold. The page's server calls Triton through detstack's client and "
            "shows the image with boxes, category names, scores and the latency. The browser "
            "never talks to Triton and never stores the token."
        ),
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help=(
            "address to listen on (default: %(default)s, this machine only; the page has no "
            "login, so expose it only behind your own access control)"
        ),
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=None,
        metavar="NAME",
        help=(
            "a further name the page may be reached by (the Host header), e.g. this machine's "
            "DNS name when --host is 0.0.0.0. Repeat for several. The --host address, "
            "'localhost' on loopback, and any IP address when listening on all addresses are "
            "always accepted; other names are refused (this is what defeats DNS rebinding)"
        ),
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8080,
        help="port of the page; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-endpoint",
        action="append",
        default=None,
        metavar="ENTRY",
        help=(
            "a Triton endpoint the page may call: network (10.0.0.0/8), address, host name, "
            "any of them with :PORT, or '*' for any (an open proxy). Repeat for several; "
            "entries replace the default. The --endpoint value is always allowed too. "
            f"Default: Triton's ports on loopback ({', '.join(DEFAULT_ALLOWED_ENDPOINTS)})"
        ),
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=10.0,
        help="largest accepted image in MB; larger uploads are refused with HTTP 413 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--endpoint",
        default="grpc://127.0.0.1:8001",
        help="endpoint pre-filled in the page (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL_NAME,
        help="model name pre-filled in the page (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="deadline of one request to Triton in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help=(
            "time a browser has to send one whole request, upload included; slower "
            "connections are closed (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=64,
        metavar="N",
        help=(
            "open connections the page serves at once; further requests get HTTP 503 "
            "(default: %(default)s)"
        ),
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from demo import DemoConfig, create_app

    config = DemoConfig(
        host=args.host,
        port=args.port,
        allowed_endpoints=tuple(args.allow_endpoint or DEFAULT_ALLOWED_ENDPOINTS),
        max_upload_mb=args.max_upload_mb,
        default_endpoint=args.endpoint,
        default_model=args.model,
        timeout_s=args.timeout,
        allowed_hosts=tuple(args.allow_host or ()),
        request_timeout_s=args.request_timeout,
        max_connections=args.max_connections,
    )
    server = create_app(config)
    print(f"demo page: {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping the demo page")
    finally:
        server.server_close()
    return 0
