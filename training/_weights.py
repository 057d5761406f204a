"""Finding pretrained weights: the torch hub cache, a download with a timeout, or a local file.

``weights="DEFAULT"`` means torchvision's COCO-pretrained detector (or ImageNet backbone). The
file is looked up in the torch hub cache (``$TORCH_HOME/hub/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``) under torchvision's own file name, so a file put there by
hand, or downloaded once by torchvision itself, is used as is. If it is missing it is downloaded
with a socket timeout into a temporary file beside the target, checked against the hash prefix
in its name, and renamed into place: an interrupted download never leaves a truncated file that
would be mistaken for the real one. A machine without internet gets a :class:`WeightsError`
within the timeout that says which URL failed, where to put the file by hand, and what to pass
instead (``--weights none`` or ``--weights PATH``), never a hang.

``weights=PATH`` loads a whole-detector state dict: torchvision's ``.pth`` files, a training
checkpoint of torchvision's reference scripts (``{"model": ...}``) or a detstack checkpoint.
Only the box predictor may differ in shape (other categories); it is then left as built.

Example:
    >>> path = ensure_cached(                                       # doctest: +SKIP
    ...     "https://download.pytorch.org/models/resnet18-f37072fd.pth", what="ResNet-18"
    ... )
    >>> load_detector_file(model, "runs/coco/best.pt")              # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from detstack.atomic import atomic_writer
from detstack.errors import WeightsError
from detstack.progress import progress

logger = logging.getLogger(__name__)

#: Seconds a connection or a read may stall before the download is given up.
DEFAULT_TIMEOUT = 30.0

_CHUNK = 1 << 20
# torchvision names files <name>-<first hex digits of the sha256>.pth
_HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")
# Parameters of the box predictor: the only ones allowed to differ from a loaded file.
_PREDICTOR_PREFIX = "roi_heads.box_predictor."

_DETECTOR_WEIGHTS = {
    "fasterrcnn_resnet50_fpn": "FasterRCNN_ResNet50_FPN_Weights",
    "fasterrcnn_resnet50_fpn_v2": "FasterRCNN_ResNet50_FPN_V2_Weights",
    "fasterrcnn_mobilenet_v3_large_fpn": "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights",
}

_BACKBONE_WEIGHTS = {
    "fasterrcnn_resnet50_fpn": ("torchvision.models", "ResNet50_Weights"),
    "fasterrcnn_resnet50_fpn_v2": ("torchvision.models", "ResNet50_Weights"),
    "fasterrcnn_mobilenet_v3_large_fpn": ("torchvision.models", "MobileNet_V3_Large_Weights"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("torchvision.models", "MobileNet_V3_Large_Weights"),
    "resnet18": ("torchvision.models", "ResNet18_Weights"),
}


def resolve_detector_weights(architecture: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Return torchvision's DEFAULT weights enum for ``architecture``, its file present in cache.

    Raises:
        WeightsError: the architecture has no COCO-pretrained weights, or the download failed.
    """
    import torchvision.models.detection as detection

    if architecture not in _DETECTOR_WEIGHTS:
        raise WeightsError(
            f"architecture {architecture!r} has no COCO-pretrained weights; pass --weights none "
            f"or --weights PATH (pretrained exist for {', '.join(_DETECTOR_WEIGHTS)})"
        )
    weights = getattr(detection, _DETECTOR_WEIGHTS[architecture]).DEFAULT
    ensure_cached(weights.url, what=f"COCO-pretrained {architecture}", timeout=timeout)
    return weights


def resolve_backbone_weights(architecture: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Return the ImageNet DEFAULT weights enum of ``architecture``'s backbone, file cached."""
    module, name = _BACKBONE_WEIGHTS[architecture]
    weights = getattr(importlib.import_module(module), name).DEFAULT
    ensure_cached(
        weights.url,
        what=f"ImageNet-pretrained backbone of {architecture}",
        timeout=timeout,
        backbone=True,
    )
    return weights


def cache_path(url: str) -> Path:
    """Where torch (and therefore torchvision) keeps the file of ``url``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def ensure_cached(
    url: str, *, what: str, timeout: float = DEFAULT_TIMEOUT, backbone: bool = False
) -> Path:
    """Make sure ``url`` is in the torch hub cache, downloading it with a timeout if not.

    Args:
        url: the file's URL; its last path component is the cached file name.
        what: words for messages (``"COCO-pretrained fasterrcnn_resnet50_fpn"``).
        timeout: seconds a connect or a read may stall before giving up.
        backbone: the file is a backbone's (changes the advice in the error message).

    Returns:
        The cached file's path.

    Raises:
        WeightsError: the download failed or timed out, or the file's hash does not match.
    """
    target = cache_path(url)
    if target.is_file():
        return target
    logger.info("downloading %s weights from %s to %s", what, url, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _download(url, target, timeout)
    except (TimeoutError, urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        flag = "--weights-backbone none" if backbone else "--weights none"
        raise WeightsError(
            f"cannot download {what} weights from {url} ({reason}; timeout {timeout:g} s). "
            f"On a machine without internet, download that file elsewhere and put it at "
            f"{target} (the torch hub cache: $TORCH_HOME/hub/checkpoints/{target.name}); or "
            f"pass {flag} to train from scratch, or --weights PATH to start from a local "
            f"detector state dict"
        ) from None
    return target


def _download(url: str, target: Path, timeout: float) -> None:
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"only http(s) URLs are downloaded, got {url!r}")
    expected = _HASH_PREFIX.search(target.name)
    digest = hashlib.sha256()
    # The hash is checked inside the block: a raise there discards the download, and the
    # hub cache never holds a corrupt file under the name torch would trust.
    with (
        atomic_writer(target) as stream,
        urllib.request.urlopen(url, timeout=timeout) as response,  # noqa: S310 - http(s) only
    ):
        total = int(response.headers.get("Content-Length") or 0) or None
        with progress(total=total, desc=target.name, unit="B", unit_scale=True) as bar:
            while chunk := response.read(_CHUNK):
                stream.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if expected and not digest.hexdigest().startswith(expected.group(1)):
            raise ValueError(
                f"downloaded file's sha256 {digest.hexdigest()[:12]}... does not start with "
                f"{expected.group(1)} (corrupt or tampered download)"
            )


def load_detector_file(model: Any, path: str | os.PathLike[str]) -> None:
    """Load a whole-detector state dict from ``path`` into ``model``.

    Accepts a plain state dict (torchvision's ``.pth``), ``{"model": state_dict}`` (torchvision
    reference scripts) or a detstack checkpoint; a ``module.`` prefix left by
    DistributedDataParallel is removed. Box-predictor tensors whose shape differs from the
    model's (a file trained on other categories) are skipped and keep their fresh values.

    Raises:
        WeightsError: the file is missing or unreadable, or other parameters do not match
            (a file of another architecture); the message lists them.
    """
    import pickle

    import torch

    file = Path(path)
    if not file.is_file():
        raise WeightsError(
            f"weights file {file} does not exist; expected a detector state dict (.pth/.pt), "
            f"or --weights DEFAULT / none"
        )
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise WeightsError(f"cannot read weights file {file}: {error}") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise WeightsError(f"{file} does not hold a state dict (found {type(data).__name__})")
    state = {k.removeprefix("module."): v for k, v in data.items()}

    own = model.state_dict()
    skipped, mismatched = [], []
    for key, value in list(state.items()):
        if key in own and getattr(value, "shape", None) != own[key].shape:
            (skipped if key.startswith(_PREDICTOR_PREFIX) else mismatched).append(
                f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
            )
            del state[key]
    # num_batches_tracked exists only in live BatchNorm2d; it never changes the outputs.
    missing = [
        k
        for k in own
        if k not in state
        and not k.endswith("num_batches_tracked")
        and not (k.startswith(_PREDICTOR_PREFIX) and skipped)
    ]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    problems = mismatched + [f"missing {k}" for k in missing]
    problems += [f"unexpected {k}" for k in unexpected]
    if problems:
        shown = "; ".join(problems[:8]) + (
            f"; ... {len(problems) - 8} more" if problems[8:] else ""
        )
        raise WeightsError(
            f"weights file {file} does not fit the {type(model).__name__} being built "
            f"({len(problems)} problems: {shown}); was it saved from another architecture?"
        )
    state = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(state, strict=False)
    if skipped:
        logger.info("kept a fresh box predictor (file has other categories: %s)", skipped)
    logger.info("loaded detector weights from %s", file)
