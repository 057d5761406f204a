"""Read the page's ``multipart/form-data`` upload as a stream, within fixed limits.

The body comes from whoever can reach the page, so it is parsed by ``python-multipart``'s
streaming parser (linear time, no recursion, bounded part headers) and every dimension is capped
here: the total size, the number of parts, the size of each text field, a single file, and only
the field names the page sends. Everything is held in memory, which the limits bound.

Example:
    >>> reader = FormReader("multipart/form-data; boundary=b", FormLimits(max_file_bytes=1024))
    >>> reader.feed(b'--b\\r\\nContent-Disposition: form-data; name="threshold"\\r\\n\\r\\n')
    >>> reader.feed(b"0.5\\r\\n--b--\\r\\n")
    >>> reader.finish().fields
    {'threshold': '0.5'}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from detstack.errors import DetstackError

__all__ = ["FileTooLargeError", "FormData", "FormError", "FormLimits", "FormReader", "UploadedFile"]

#: The fields the page sends; any other name is refused.
TEXT_FIELDS = frozenset({"endpoint", "model", "token", "threshold"})
FILE_FIELDS = frozenset({"image"})


class FormError(DetstackError):
    """The request body is not the form the page sends."""


class FileTooLargeError(FormError):
    """The uploaded file (or the whole body) is larger than the page accepts."""


@dataclass(frozen=True)
class FormLimits:
    """Caps on one upload.

    Attributes:
        max_file_bytes: largest accepted file.
        max_field_bytes: largest text field (endpoint, model, token, threshold).
        max_parts: most parts in one body (the page sends five).
        max_header_bytes: longest header line of one part (python-multipart checks it).
        max_headers: most header lines in one part.
        overhead_bytes: room for text fields and boundaries on top of the file.
    """

    max_file_bytes: int
    max_field_bytes: int = 16 * 1024
    max_parts: int = 8
    max_header_bytes: int = 4096
    max_headers: int = 8
    overhead_bytes: int = 64 * 1024

    @property
    def max_body_bytes(self) -> int:
        """The largest body worth reading: the file plus room for fields and boundaries."""
        return self.max_file_bytes + self.overhead_bytes


@dataclass(frozen=True)
class UploadedFile:
    """One uploaded file: the name the browser gave it and its bytes."""

    filename: str
    data: bytes


@dataclass(frozen=True)
class FormData:
    """Text fields and files of a form, by field name (each name at most once)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)


class FormReader:
    """Feed the body chunk by chunk (:meth:`feed`), then take the form (:meth:`finish`).

    Raises (from the constructor, :meth:`feed` and :meth:`finish`):
        FormError: not multipart/form-data, malformed, an unknown or repeated field, too many
            parts, a text field too long or not UTF-8.
        FileTooLargeError: the file or the whole body is over the limit.
    """

    def __init__(self, content_type: str, limits: FormLimits) -> None:
        media_type, params = parse_options_header(content_type)
        if media_type != b"multipart/form-data":
            raise FormError(
                f"expected a multipart/form-data upload, got {content_type[:100] or 'nothing'!r}"
            )
        boundary = params.get(b"boundary")
        if not boundary:
            raise FormError("the multipart/form-data upload names no boundary")
        self._limits = limits
        self._received = 0
        self._parts = 0
        self._ended = False
        self._fields: dict[str, str] = {}
        self._files: dict[str, UploadedFile] = {}
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._name = ""
        self._filename: str | None = None
        self._data = bytearray()
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._on_part_begin,
                    "on_header_field": self._on_header_field,
                    "on_header_value": self._on_header_value,
                    "on_header_end": self._on_header_end,
                    "on_headers_finished": self._on_headers_finished,
                    "on_part_data": self._on_part_data,
                    "on_part_end": self._on_part_end,
                    "on_end": self._on_end,
                },
                max_header_count=limits.max_headers,
                max_header_size=limits.max_header_bytes,
            )
        except FormParserError as error:
            raise FormError(f"the upload's boundary is not usable ({error})") from None

    # ------------------------------------------------------------------ feeding

    def feed(self, chunk: bytes) -> None:
        """Parse the next piece of the body."""
        self._received += len(chunk)
        if self._received > self._limits.max_body_bytes:
            raise self._too_large(self._received)
        try:
            self._parser.write(chunk)
        except FormParserError as error:
            raise FormError(f"the upload is not a well-formed multipart body ({error})") from None

    def finish(self) -> FormData:
        """The parsed form; the body must have ended with its closing boundary."""
        if not self._ended:
            raise FormError("the upload ended before its closing multipart boundary")
        return FormData(fields=dict(self._fields), files=dict(self._files))

    # ------------------------------------------------------------------ callbacks

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > self._limits.max_parts:
            raise FormError(f"the upload has more than {self._limits.max_parts} parts")
        self._disposition, self._name, self._filename = b"", "", None
        self._data = bytearray()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            if self._disposition:
                raise FormError("a part of the upload has two Content-Disposition headers")
            self._disposition = bytes(self._header_value)
        self._header_name, self._header_value = bytearray(), bytearray()

    def _on_headers_finished(self) -> None:
        kind, options = parse_options_header(self._disposition)
        if kind != b"form-data":
            raise FormError("a part of the upload is not form-data (no Content-Disposition)")
        name = _text(options.get(b"name", b""))
        if name not in TEXT_FIELDS | FILE_FIELDS:
            expected = ", ".join(sorted(TEXT_FIELDS | FILE_FIELDS))
            raise FormError(f"unexpected form field {name[:64]!r}; expected {expected}")
        if name in self._fields or name in self._files:
            raise FormError(f"form field {name!r} appears twice")
        if (b"filename" in options) != (name in FILE_FIELDS):
            raise FormError(
                f"form field {name!r} must be "
                + ("a file" if name in FILE_FIELDS else "text, not a file")
            )
        self._name = name
        self._filename = _text(options[b"filename"]) if name in FILE_FIELDS else None

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]
        if self._filename is not None:
            if len(self._data) > self._limits.max_file_bytes:
                raise self._too_large(len(self._data))
        elif len(self._data) > self._limits.max_field_bytes:
            raise FormError(
                f"form field {self._name!r} is longer than {self._limits.max_field_bytes} bytes"
            )

    def _on_part_end(self) -> None:
        if not self._name:
            raise FormError("a part of the upload has no headers")
        if self._filename is not None:
            self._files[self._name] = UploadedFile(self._filename, bytes(self._data))
            return
        try:
            self._fields[self._name] = self._data.decode("utf-8")
        except UnicodeDecodeError:
            raise FormError(f"form field {self._name!r} is not UTF-8 text") from None

    def _on_end(self) -> None:
        self._ended = True

    def _too_large(self, size: int) -> FileTooLargeError:
        limit = self._limits.max_file_bytes
        return FileTooLargeError(
            f"the upload is over {size / 1048576:.1f} MB; this page accepts images up to "
            f"{limit / 1048576:.1f} MB"
        )


def _text(raw: bytes) -> str:
    """A header parameter as text: browsers send UTF-8 bytes, python-multipart keeps them."""
    return raw.decode("utf-8", errors="replace")
