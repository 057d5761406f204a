"""The served model's category names and colours, per model version, learnt from the server.

The export stage writes every version's label map into the model config
(``parameters[LABEL_MAP_PARAMETER]``: JSON ``{"<version>": {"<id>": {"name", "color"}}}``), so a
client needs nothing but the URL. :class:`LabelMaps` fetches it once, and again only for a
version it has not seen (a new version was loaded), at most every few seconds, so a model
without a label map costs no extra requests.

Example:
    >>> maps = LabelMaps(client.model_config, "my-model")                # doctest: +SKIP
    >>> maps.labels("1")                                                   # doctest: +SKIP
    {0: {'name': 'circle', 'color': '#66c2a5'}}
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from detstack.contract import LABEL_MAP_PARAMETER

__all__ = ["LabelMaps", "config_parameter", "label_map_from_config"]

logger = logging.getLogger(__name__)

#: Least seconds between two label-map fetches triggered by an unknown model version.
_LABEL_REFRESH_S = 5.0


def config_parameter(config: dict[str, Any], key: str) -> str | None:
    """A ``string_value`` parameter of a model config (Triton's JSON form), or None."""
    entry = (config.get("parameters") or {}).get(key)
    if not entry:
        return None
    text = entry.get("string_value", "") if isinstance(entry, dict) else str(entry)
    return text or None


def label_map_from_config(config: dict[str, Any], parameter: str) -> dict[str, dict[int, dict]]:
    """``{version: {category id: {"name", "color"}}}`` from a model config (``{}`` if absent)."""
    text = config_parameter(config, parameter)
    if text is None:
        return {}
    try:
        raw = json.loads(text)
        return {
            str(version): {int(i): dict(info) for i, info in categories.items()}
            for version, categories in raw.items()
        }
    except (ValueError, TypeError, AttributeError) as error:
        logger.warning("the model's %s parameter is not a valid label map: %s", parameter, error)
        return {}


class LabelMaps:
    """Every served version's label map, fetched through ``fetch_config`` (thread-safe).

    Args:
        fetch_config: returns the served model's config as JSON (one request).
        model: the model's name, for the warning when it carries no label map.
    """

    def __init__(self, fetch_config: Callable[[], dict[str, Any]], model: str) -> None:
        self._fetch_config = fetch_config
        self._model = model
        self._maps: dict[str, dict[int, dict]] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Fetch the label maps now."""
        label_maps = label_map_from_config(self._fetch_config(), LABEL_MAP_PARAMETER)
        if not label_maps:
            logger.warning(
                "model %r carries no label map (parameter %r): names will be category ids",
                self._model,
                LABEL_MAP_PARAMETER,
            )
        with self._lock:
            self._maps = label_maps
            self._fetched_at = time.monotonic()

    def labels(self, version: str | None = None) -> dict[int, dict[str, str]]:
        """``{category id: {"name", "color"}}`` of a served version (default: the newest)."""
        with self._lock:
            known = dict(self._maps)
            fetched_at = self._fetched_at
        stale = fetched_at is None or (
            (not known or (version and version not in known))
            and time.monotonic() - fetched_at > _LABEL_REFRESH_S
        )
        if stale:
            self.refresh()
            with self._lock:
                known = dict(self._maps)
        if not known:
            return {}
        if not version:
            version = max(known, key=lambda v: (len(v), v))  # numeric versions, newest
        return dict(known.get(str(version), {}))

    def names(self, labels: np.ndarray, version: str) -> tuple[str, ...]:
        """The category name of each label (the id as text when the map does not know it)."""
        if not len(labels):
            return ()
        with self._lock:
            mapping = self._maps.get(version)
        if mapping is None:
            mapping = self.labels(version or None)
        return tuple(str(mapping.get(int(i), {}).get("name", int(i))) for i in labels)
