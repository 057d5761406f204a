"""detstack's core: what every stage shares, and nothing that knows about a stage.

The error hierarchy (``errors``), the tensor contract (``contract``), the one image policy
(``images``), what an encoded image is on the wire (``wire``), where an API token comes from
(``tokens``). It imports no other detstack package; the stages (``training``, ``export``,
``serve``, ``client``) build on it, and the top (``bench``, ``demo``, ``pipeline``, ``cli``) on
them. docs/ARCHITECTURE.md draws the layers and CI checks them (``lint-imports``).
"""

__version__ = "0.1.0"
