"""Checks a model repository before Triton sees it, and turns S3 URLs into Triton's form.

Triton's own messages for a bad repository are terse ("failed to load all models") or absent (an
empty folder serves nothing, and says so nowhere). We check a local repository first and say what
is wrong and what was expected: no model folders, a model with no config for the chosen flavour,
a config for a backend the embedded server does not have, a model with no version. A version
the config's label map does not name (an export killed after it published the version and before
it rewrote the configs) is served, with a warning that says how to repair it. The GPU-only
sibling models of ``export --gpu-decode`` (``<name>-gate``, ``-decode``, ``-detector``) are left
out of a flavour that has no config for them: the embedded server serves a view of links to the
other models (:func:`flavour_view`).

For S3, Triton reads the bucket itself. It wants ``s3://bucket/path`` for AWS and
``s3://http://host:port/bucket/path`` for another endpoint, with credentials in the usual
``AWS_*`` environment variables.

Example:
    >>> triton_s3_url("s3://models/detection", "http://127.0.0.1:9000")
    's3://http://127.0.0.1:9000/models/detection'
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from detstack.contract import GPU_DECODE_PART_PARAMETER, LABEL_MAP_PARAMETER
from detstack.errors import ConfigError, RepositoryError

if TYPE_CHECKING:
    from serve._config import ServeConfig

__all__ = [
    "S3_OPTIONAL_VARIABLES",
    "S3_VARIABLES",
    "ModelEntry",
    "check_local_repository",
    "flavour_view",
    "served_repository",
    "triton_s3_url",
]

logger = logging.getLogger(__name__)

#: Backends shipped with the nvidia-pytriton tritonserver binary.
EMBEDDED_BACKENDS = frozenset({"python"})
#: The environment variables Triton reads S3 credentials from (passed through by name).
S3_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
)
#: Those a store may do without (a session token, a region).
S3_OPTIONAL_VARIABLES = frozenset({"AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"})

# Triton 2.51 parses S3 paths with this pattern (core/src/filesystem/implementations/s3.h):
# bucket names in lowercase letters, digits, '.', '-'; path parts in letters, digits, '.', '-', '_'.
_BUCKET = re.compile(r"^[0-9a-z.\-]+$")
_PATH_PART = re.compile(r"^[0-9a-zA-Z.\-_]+$")
_HOST = re.compile(r"^[0-9a-zA-Z\-.]+$")


@dataclass(frozen=True)
class ModelEntry:
    """One model folder of a local repository and the versions it holds."""

    name: str
    versions: tuple[int, ...]
    config_file: Path


def _model_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _parse_config(config_file: Path):
    """A config.pbtxt parsed with Triton's own protobuf."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(
            config_file.read_text(encoding="utf-8"), model_config_pb2.ModelConfig()
        )
    except (OSError, UnicodeDecodeError, text_format.ParseError) as error:
        raise RepositoryError(f"cannot parse {config_file}: {error}") from None


def _part_of_another_flavour(model: Path, config_name: str | None) -> bool:
    """Whether ``model`` is a ``--gpu-decode`` sibling this flavour does not serve.

    Such a model (``<name>-gate``, ``-decode``, ``-detector``) names the model it belongs to in
    ``parameters[GPU_DECODE_PART_PARAMETER]`` and has only the GPU flavour's config; Triton would
    fall back to that ``config.pbtxt`` (DALI, onnxruntime), which the embedded server cannot load.
    """
    if not config_name or (model / "configs" / f"{config_name}.pbtxt").is_file():
        return False
    config_file = model / "config.pbtxt"
    if not config_file.is_file():
        return False
    try:
        return GPU_DECODE_PART_PARAMETER in _parse_config(config_file).parameters
    except RepositoryError:
        return False


def flavour_view(root: Path, config_name: str | None, into: Path) -> Path | None:
    """A repository of links to the models of ``root`` that flavour ``config_name`` serves.

    ``None`` when that is every model (nothing to leave out). Otherwise ``into/repository``,
    holding one symbolic link per served model folder: Triton serves it in model control mode
    ``none`` (no client can load or unload a model) and, with ``--poll``, still finds new
    versions inside the linked folders; a model *added* to ``root`` later is served only after a
    restart.
    """
    models = _model_dirs(Path(root))
    left_out = [m for m in models if _part_of_another_flavour(m, config_name)]
    if not left_out:
        return None
    logger.info(
        "not serving %s with --model-config-name=%s (GPU-flavour parts of another model)",
        ", ".join(m.name for m in left_out),
        config_name,
    )
    view = Path(into) / "repository"
    view.mkdir()
    for model in models:
        if model not in left_out:
            (view / model.name).symlink_to(model.resolve(), target_is_directory=True)
    return view


def _read_backend(config_file: Path) -> str:
    """The backend (or platform) a config.pbtxt names."""
    config = _parse_config(config_file)
    return config.backend or config.platform


def _warn_on_unnamed_versions(name: str, config_file: Path, versions: tuple[int, ...]) -> None:
    """Warn about versions the config's label map leaves out (an interrupted export)."""
    try:
        parameters = _parse_config(config_file).parameters
        if LABEL_MAP_PARAMETER not in parameters:
            return  # not a detstack export: nothing to compare
        named = json.loads(parameters[LABEL_MAP_PARAMETER].string_value)
    except (RepositoryError, ValueError):
        return
    missing = [v for v in versions if not isinstance(named, dict) or str(v) not in named]
    if missing:
        logger.warning(
            "model '%s' version(s) %s are not in the label map of %s: an export was probably "
            "stopped after it published the version and before it rewrote the configs; they are "
            "served without category names until the next detstack export rewrites the configs",
            name,
            ", ".join(map(str, missing)),
            config_file,
        )


def check_local_repository(
    root: Path,
    config_name: str | None,
    available_backends: frozenset[str] | None = EMBEDDED_BACKENDS,
) -> list[ModelEntry]:
    """Check that ``root`` is a model repository Triton can serve with ``config_name``.

    Args:
        root: the repository folder.
        config_name: Triton's ``--model-config-name`` (``configs/<name>.pbtxt``); Triton falls
            back to ``config.pbtxt`` for a model without it, and so do we.
        available_backends: backends the server has; ``None`` skips that check (container).

    Returns:
        The models found, with their version numbers.

    Raises:
        RepositoryError: naming the folder or model at fault and what was expected.
    """
    root = Path(root)
    if not root.exists():
        raise RepositoryError(
            f"model repository {root} does not exist (export a model first: detstack export)"
        )
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a folder")
    models = _model_dirs(root)
    if not models:
        raise RepositoryError(
            f"model repository {root} holds no model folder; expected "
            f"{root}/<model name>/config.pbtxt and {root}/<model name>/<version>/ "
            "(write one with: detstack export CHECKPOINT --repository " + str(root) + ")"
        )
    entries = []
    for model in models:
        if _part_of_another_flavour(model, config_name):
            continue  # left out of this flavour's view (flavour_view)
        custom = model / "configs" / f"{config_name}.pbtxt" if config_name else None
        config_file = custom if custom is not None and custom.is_file() else model / "config.pbtxt"
        if not config_file.is_file():
            wanted = (
                f"configs/{config_name}.pbtxt or config.pbtxt" if config_name else "config.pbtxt"
            )
            raise RepositoryError(f"model '{model.name}' in {root} has no {wanted}")
        if available_backends is not None:
            backend = _read_backend(config_file)
            if backend not in available_backends:
                hint = (
                    f" (no configs/{config_name}.pbtxt, so Triton would use config.pbtxt)"
                    if config_name and config_file.name == "config.pbtxt"
                    else ""
                )
                raise RepositoryError(
                    f"model '{model.name}' uses backend '{backend or '?'}' in "
                    f"{config_file}{hint}; the embedded tritonserver only has "
                    f"{', '.join(sorted(available_backends))}. Re-export "
                    "the model (detstack export writes configs/embedded.pbtxt) or serve it with "
                    "--mode container"
                )
        versions = tuple(
            sorted(int(p.name) for p in model.iterdir() if p.is_dir() and p.name.isdigit())
        )
        if not versions:
            raise RepositoryError(
                f"model '{model.name}' in {root} has no version folder (expected {model}/1/ ...)"
            )
        _warn_on_unnamed_versions(model.name, config_file, versions)
        entries.append(ModelEntry(model.name, versions, config_file))
    return entries


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``, checked against Triton's S3 path rules."""
    if not url.startswith("s3://"):
        raise ConfigError(f"an S3 repository must look like s3://bucket/prefix, got {url!r}")
    rest = url[len("s3://") :].strip("/")
    bucket, _, prefix = rest.partition("/")
    if not bucket or not _BUCKET.match(bucket):
        raise ConfigError(
            f"S3 bucket {bucket!r} in {url!r} is not usable by Triton: bucket names may only hold "
            "lowercase letters, digits, '.' and '-'"
        )
    parts = [part for part in prefix.split("/") if part]
    bad = [part for part in parts if not _PATH_PART.match(part)]
    if bad:
        raise ConfigError(
            f"S3 prefix part {bad[0]!r} in {url!r} is not usable by Triton: path parts may only "
            "hold letters, digits, '.', '-' and '_'"
        )
    return bucket, "/".join(parts)


def triton_s3_url(url: str, endpoint_url: str | None) -> str:
    """The ``--model-repository`` value Triton needs for ``url`` on ``endpoint_url``.

    Args:
        url: ``s3://bucket/prefix``.
        endpoint_url: ``http(s)://host:port`` of an S3-compatible store, or ``None`` for AWS.
    """
    bucket, prefix = split_s3_url(url)
    path = f"{bucket}/{prefix}" if prefix else bucket
    if endpoint_url is None:
        return f"s3://{path}"
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(
            "--s3-endpoint-url must look like http://host:port or https://host:port, "
            f"got {endpoint_url!r}"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"--s3-endpoint-url has an invalid port: {endpoint_url!r}") from None
    if not _HOST.match(parts.hostname):
        raise ConfigError(
            f"--s3-endpoint-url host {parts.hostname!r} is not usable by Triton "
            "(letters, digits, '.', '-')"
        )
    return f"s3://{parts.scheme}://{parts.hostname}:{port}/{path}"


def served_repository(
    config: ServeConfig, available_backends: frozenset[str] | None
) -> tuple[str, Path | None]:
    """Triton's ``--model-repository`` for ``config``, and its checked local folder.

    Args:
        config: the serve configuration (a local folder or an ``s3://`` URL).
        available_backends: as for :func:`check_local_repository`.

    Returns:
        ``(repository, folder)``: for S3, Triton's URL and ``None`` (Triton reads the bucket
        itself); for a local repository, its resolved path as text and as a path.

    Raises:
        RepositoryError: the local repository cannot be served (see
            :func:`check_local_repository`).
        ConfigError: the S3 URL or endpoint is not usable by Triton.
    """
    if config.is_s3:
        return triton_s3_url(config.repository, config.s3_endpoint_url), None
    root = Path(config.repository).expanduser().resolve()
    check_local_repository(root, config.config_name, available_backends)
    return str(root), root
