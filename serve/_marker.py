"""Files we write start with a marker line; only such files are ever overwritten.

``detstack serve --mode container`` writes a compose file and ``detstack deploy k8s --output``
a folder of manifests, both at paths the user names. A path that holds anything else (their
own compose file, a folder, a device) is left alone, and the caller refuses with its own typed
error.

Example:
    >>> ours_or_absent(Path("compose.yaml"), "# Written by `detstack serve --mode container`")
    True
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ours_or_absent"]


def ours_or_absent(path: Path, marker: str) -> bool:
    """Whether ``path`` may be written: nothing is there, or a file that starts with ``marker``."""
    if not path.exists():
        return True
    return path.is_file() and path.read_text(encoding="utf-8", errors="replace").startswith(marker)
