"""Spot ids ``spot_<n>``, unique across every drawn-spots layer of a slide (no Qt here).

One counter per slide (:class:`SlideIds`), started above the highest id of the slide's
layers and of its saved table, that only grows: a deleted spot's id is never given again.
:func:`assign_ids` is the rule applied after every change of a layer: a shape whose id is
empty, repeated, held by another layer of the slide or never given out to this layer
(napari copies the selected shape's features into new and pasted shapes, a duplicated
layer copies them all) gets a fresh id, with source ``drawn``.

Bins layers (:mod:`._spot_layer`) hold their ids as numbers (``spot_<n>`` ↔ ``n``) and follow
the same rule with array operations (:func:`assign_numbers`): a fill takes one block of
fresh numbers from the slide's counter (:meth:`SlideIds.reserve`), so a million bins never
make a million Python strings or set lookups.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import project
from ..errors import InputFileError

_ID_RE = re.compile(r"^spot_(\d+)$")
#: What an empty id cell reads as once the features table went through ``astype(str)``.
_EMPTY = ("", "nan", "None")
#: Sources a spot may have; anything else reads as ``drawn``.
SOURCES = ("drawn", "grid")


def id_number(spot_id: str) -> int:
    """``n`` of an id ``spot_<n>``, -1 for any other id."""
    m = _ID_RE.match(str(spot_id))
    return int(m.group(1)) if m else -1


def _column(layer: Any, name: str) -> list[str] | None:
    """A features column of ``layer`` as text (missing cells ``""``), ``None`` when the
    features are absent or out of step with the shapes."""
    feats = layer.features
    if name not in feats or len(feats) != len(layer.data):
        return None
    col = feats[name].astype(object)
    return col.where(col.notna(), "").astype(str).tolist()


def layer_ids(layer: Any) -> list[str]:
    """The ids of a drawn-spots layer's shapes (``[]`` when its features are out of step)."""
    return _column(layer, "id") or []


def layer_sources(layer: Any) -> list[str]:
    """The sources of a drawn-spots layer's shapes (all ``drawn`` when out of step)."""
    sources = _column(layer, "source")
    return sources if sources is not None else ["drawn"] * len(layer.data)


def saved_next_id(path: Path | None) -> int:
    """One above the highest ``spot_<n>`` of the slide's saved tables (0 without one)."""
    if path is None:
        return 0
    top = -1
    try:
        saved = project.load_spots(path, bins=False)
        top = max((id_number(i) for i in saved["id"]), default=-1)
    except InputFileError:
        pass
    try:
        numbers = project.load_spot_bins(path, ids=False)["id_number"].to_numpy()
        top = max(top, int(numbers.max()) if len(numbers) else -1)
    except InputFileError:
        pass
    return top + 1


@dataclass
class SlideIds:
    """A slide's id counter and the ids its user deleted."""

    next_number: int = 0
    deleted: set[str] = field(default_factory=set)

    def bump(self, ids: list[str]) -> None:
        """Move the counter above the highest ``spot_<n>`` of ``ids``."""
        top = max((id_number(i) for i in ids), default=-1) + 1
        self.next_number = max(self.next_number, top)

    def reserve(self, n: int, taken: np.ndarray | None = None) -> int:
        """Take ``n`` consecutive fresh numbers (never given before, all above ``taken``);
        returns the first."""
        start = self.next_number
        if taken is not None and len(taken):
            start = max(start, int(np.max(taken)) + 1)
        self.next_number = start + int(n)
        return start

    def fresh(self, taken: set[str]) -> Iterator[str]:
        """Fresh ids (lazily): never given before, not in ``taken``."""
        for _ in itertools.count():
            n = self.next_number
            self.next_number = n + 1
            spot_id = f"spot_{n}"
            if spot_id not in taken:
                yield spot_id


def assign_ids(
    ids: list[str],
    sources: list[str],
    *,
    known: set[str],
    elsewhere: set[str],
    fresh: Iterator[str],
) -> tuple[bool, set[str]]:
    """Apply the id rule (module docstring) to one layer's ``ids`` and ``sources`` in place.

    ``known``: the ids given out to this layer; ``elsewhere``: the ids of the slide's other
    layers; ``fresh``: where new ids come from. Returns whether an id or a source changed,
    and the layer's ids afterwards (its new ``known``).
    """
    seen: set[str] = set()
    changed = False
    for i, spot_id in enumerate(ids):
        if spot_id in _EMPTY or spot_id in seen or spot_id in elsewhere or spot_id not in known:
            ids[i] = next(fresh)
            sources[i] = "drawn"
            changed = True
        elif sources[i] not in SOURCES:
            sources[i] = "drawn"
            changed = True
        seen.add(ids[i])
    return changed, seen


def assign_numbers(
    numbers: np.ndarray, *, known: np.ndarray, elsewhere: np.ndarray, ids: SlideIds
) -> tuple[np.ndarray, bool]:
    """The id rule on a bins layer's id ``numbers``, vectorised: a bin whose number is
    missing (``< 0``), repeated (the first keeps it), held by another spots layer of the
    slide (``elsewhere``) or never given out to this layer (``known``) gets a fresh one
    from ``ids``. Returns the numbers afterwards (a new array when any changed) and whether
    any changed."""
    nums = np.asarray(numbers, dtype=np.int64)
    bad = nums < 0
    if len(nums) > 1 and not (np.diff(nums) > 0).all():  # (a fill's numbers increase)
        order = np.argsort(nums, kind="stable")
        repeat = np.zeros(len(nums), dtype=bool)
        repeat[order[1:]] = nums[order[1:]] == nums[order[:-1]]
        bad |= repeat
    if len(elsewhere):
        bad |= np.isin(nums, elsewhere)
    if not (len(known) == len(nums) and np.array_equal(known, nums)):
        bad |= ~np.isin(nums, known)
    k = int(bad.sum())
    if not k:
        return nums, False
    out = nums.copy()
    start = ids.reserve(k, np.concatenate([nums[~bad], elsewhere]))
    out[bad] = np.arange(start, start + k, dtype=np.int64)
    return out, True
