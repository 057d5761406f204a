"""The one error hierarchy of detstack.

Every error a user can cause or meet derives from :class:`DetstackError`, so the CLI can catch
one type, print its message and exit non-zero without a traceback. Messages name the value that
was received and what was expected.

Example:
    >>> try:
    ...     raise DatasetError("category_id 7 is not in 'categories' (known: 1, 3)")
    ... except DetstackError as error:
    ...     print(error)
    category_id 7 is not in 'categories' (known: 1, 3)
"""

from __future__ import annotations


class DetstackError(Exception):
    """Base class of every error detstack raises on purpose."""


class ConfigError(DetstackError):
    """A configuration value (flag, config file entry) is invalid."""


class ImageDecodeError(DetstackError):
    """Bytes that should be an image are not a usable image (format, bomb, truncated, empty)."""


class DatasetError(DetstackError):
    """The COCO dataset cannot be used as it is (missing files, unknown ids, ...)."""


class StorageError(DetstackError):
    """A local or S3 location cannot be read or written."""


class WeightsError(DetstackError):
    """Pretrained weights cannot be found or downloaded."""


class TrainingError(DetstackError):
    """Training cannot go on (for example a non-finite loss)."""


class CheckpointError(DetstackError):
    """A checkpoint file is missing, corrupt or of an unknown format."""


class ExportError(DetstackError):
    """The model cannot be exported to ONNX."""


class ExportValidationError(ExportError):
    """ONNX and PyTorch disagree; the message lists every mismatch."""


class RepositoryError(DetstackError):
    """A Triton model repository is missing, invalid, or cannot be written."""


class ServeError(DetstackError):
    """The Triton server cannot be started or did not become ready."""


class InferenceError(DetstackError):
    """A request to the served model failed."""


class ServerUnreachableError(InferenceError):
    """The server did not answer (connection refused/reset, timeout)."""


class UnauthorizedError(InferenceError):
    """The server refused the API token (missing or wrong)."""


class ModelNotReadyError(InferenceError):
    """The model is unknown to the server or not ready yet."""


class BadInputError(InferenceError):
    """The server rejected the input as invalid (HTTP 400 / gRPC INVALID_ARGUMENT)."""


class PipelineError(DetstackError):
    """A pipeline stage failed; the message names the stage."""
