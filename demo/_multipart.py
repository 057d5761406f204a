"""Parse the page's ``multipart/form-data`` upload with the standard library only.

``cgi`` is gone from recent Pythons; the ``email`` package parses MIME multipart bodies
correctly (boundaries, quoted names, binary payloads), so the demo needs no web framework.

Example:
    >>> body = (b'--b\\r\\nContent-Disposition: form-data; name="threshold"\\r\\n\\r\\n0.5\\r\\n'
    ...         b'--b--\\r\\n')
    >>> parse_form(body, "multipart/form-data; boundary=b").fields
    {'threshold': '0.5'}
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass, field

from detstack.errors import DetstackError

__all__ = ["FormData", "FormError", "UploadedFile", "parse_form"]


class FormError(DetstackError):
    """The request body is not the form the page sends."""


@dataclass(frozen=True)
class UploadedFile:
    """One uploaded file: the name the browser gave it and its bytes."""

    filename: str
    data: bytes


@dataclass(frozen=True)
class FormData:
    """Text fields and files of a form, by field name (the last value wins)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)


def parse_form(body: bytes, content_type: str) -> FormData:
    """Parse a ``multipart/form-data`` body.

    Raises:
        FormError: not multipart/form-data, no boundary, or malformed parts.
    """
    if not content_type.lower().startswith("multipart/form-data"):
        raise FormError(f"expected a multipart/form-data upload, got {content_type or 'nothing'!r}")
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not message.is_multipart() or message.get_boundary() is None:
        raise FormError("the upload is not a well-formed multipart/form-data body")
    fields: dict[str, str] = {}
    files: dict[str, UploadedFile] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise FormError("a part of the upload has no field name")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[name] = UploadedFile(filename=filename, data=payload)
        else:
            try:
                fields[name] = payload.decode("utf-8")
            except UnicodeDecodeError:
                raise FormError(f"form field {name!r} is not UTF-8 text") from None
    return FormData(fields=fields, files=files)
