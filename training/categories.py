"""Map a dataset's own category ids to the contiguous labels a detector trains on, and back.

torchvision's detectors reserve label 0 for the background and expect the K object classes as
labels 1..K. A COCO dataset's ``category_id`` values are arbitrary integers (COCO itself uses
1..90 with gaps; other datasets start at 0). The map is kept in every checkpoint and baked into
the exported graph, so a served model answers with the dataset's own ids.

Example:
    >>> cats = CategoryMap.from_coco([{"id": 0, "name": "circle"}, {"id": 7, "name": "square"}])
    >>> cats.to_label(7), cats.to_dataset_id(1)
    (2, 0)
    >>> CategoryMap.from_dict(cats.to_dict()) == cats
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from detstack.errors import DatasetError

__all__ = ["PALETTE", "CategoryMap", "palette_color"]

#: The one palette of detstack: Set2 of ColorBrewer (what the seed draws with), then Dark2 for
#: datasets with more categories. Export writes it into the label map; the client's drawings and
#: the demo page (which gets each box's colour from its server) fall back on it.
PALETTE = (
    "#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494", "#b3b3b3",
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
)  # fmt: skip


def palette_color(index: int) -> str:
    """The ``#rrggbb`` colour of position ``index`` in :data:`PALETTE` (wrapping around)."""
    return PALETTE[index % len(PALETTE)]


@dataclass(frozen=True)
class CategoryMap:
    """Dataset category ids in training-label order: ``dataset_ids[i]`` is label ``i + 1``."""

    dataset_ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.dataset_ids) != len(self.names):
            raise DatasetError(
                f"category map has {len(self.dataset_ids)} ids but {len(self.names)} names"
            )
        if not self.dataset_ids:
            raise DatasetError("the dataset declares no categories; expected at least one")
        if len(set(self.dataset_ids)) != len(self.dataset_ids):
            duplicates = sorted({i for i in self.dataset_ids if self.dataset_ids.count(i) > 1})
            raise DatasetError(f"duplicate category ids in 'categories': {duplicates}")

    @classmethod
    def from_coco(cls, categories: Iterable[Mapping[str, Any]]) -> CategoryMap:
        """Build the map from a COCO ``categories`` list, ordered by category id."""
        entries = []
        for index, category in enumerate(categories):
            if (
                "id" not in category
                or isinstance(category["id"], bool)
                or not isinstance(category["id"], int)
            ):
                raise DatasetError(
                    f"categories[{index}] has id {category.get('id')!r}; expected an integer"
                )
            entries.append((category["id"], str(category.get("name", category["id"]))))
        entries.sort()
        return cls(tuple(i for i, _ in entries), tuple(n for _, n in entries))

    @property
    def num_classes(self) -> int:
        """Number of classes the detector predicts, background included (K + 1)."""
        return len(self.dataset_ids) + 1

    def to_label(self, dataset_id: int) -> int:
        """Training label (1..K) of a dataset category id."""
        try:
            return self.dataset_ids.index(dataset_id) + 1
        except ValueError:
            raise DatasetError(
                f"category_id {dataset_id} is not a declared category "
                f"(known ids: {', '.join(map(str, self.dataset_ids))})"
            ) from None

    def to_dataset_id(self, label: int) -> int:
        """Dataset category id of a training label (1..K)."""
        if not 1 <= label <= len(self.dataset_ids):
            raise DatasetError(f"label {label} is outside 1..{len(self.dataset_ids)}")
        return self.dataset_ids[label - 1]

    def name_of(self, dataset_id: int) -> str:
        """Name of a dataset category id."""
        return self.names[self.to_label(dataset_id) - 1]

    def colors(self) -> tuple[str, ...]:
        """One distinct ``#rrggbb`` colour per category, in label order."""
        return tuple(palette_color(i) for i in range(len(self.dataset_ids)))

    def label_map(self) -> dict[int, dict[str, str]]:
        """``{dataset id: {"name": ..., "color": ...}}``: what export and the client show."""
        return {
            i: {"name": n, "color": c}
            for i, n, c in zip(self.dataset_ids, self.names, self.colors(), strict=True)
        }

    def to_dict(self) -> dict[str, list]:
        """Plain lists only, so the map survives ``torch.load(weights_only=True)`` and JSON."""
        return {"dataset_ids": list(self.dataset_ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CategoryMap:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(tuple(int(i) for i in data["dataset_ids"]), tuple(data["names"]))
        except (KeyError, TypeError, ValueError) as error:
            raise DatasetError(f"invalid category map {dict(data)!r}: {error}") from None
