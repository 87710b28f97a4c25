"""Saving the drawn spots to the slide's project folder, debounced, without losing any.

Every change marks its slide dirty; :class:`SpotSaver` writes it :data:`SAVE_DELAY_MS`
after the last change (and at once on :meth:`SpotSaver.flush`: the widget flushes when it
is hidden or closed, and a removed layer's slide is saved first) with
:func:`napari_histoexpress.project.save_spots`: one table per slide holding the spots of all
its drawn-spots layers (column ``layer``: the layer's name), written atomically.

Nothing is lost (:func:`merge_saved`): a save keeps the saved rows of layers no longer open,
unless the user deleted those spots (deleting spots inside a layer does delete them); a
saved table that cannot be read is first kept aside as ``spots.csv.unreadable-<time>``; a
failed save leaves the slide dirty (retried with the next change), is shown as an error
notification and, through :attr:`SpotSaver.error`, in the widget's status line until a
save succeeds. :func:`saved_layers` splits a saved table back into its layers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pandas as pd
from qtpy.QtCore import QObject, QTimer

from .. import project
from ..errors import InputFileError
from ..io import spot_table
from . import _common

#: Saves are debounced: written this long after the last change.
SAVE_DELAY_MS = 400


class SpotSource(Protocol):
    """Where the saver reads a slide's spots (:class:`._spot_drawing.SpotDrawing`)."""

    slide_paths: dict[str, Path]

    def slide_spots(self, slide_key: str) -> pd.DataFrame:
        """The spots of the slide's open layers, with a ``layer`` column."""
        ...

    def deleted_ids(self, slide_key: str) -> set[str]:
        """The ids of the slide's spots the user deleted."""
        ...


def merge_saved(live: pd.DataFrame, saved: pd.DataFrame, deleted: set[str]) -> pd.DataFrame:
    """The table to save: the open layers' spots ``live`` plus the ``saved`` rows that are
    neither open nor ``deleted`` (spots of layers that were removed)."""
    detached = saved[~saved["id"].isin(set(live["id"]) | deleted)]
    return pd.concat([live, detached], ignore_index=True) if len(detached) else live


def saved_layers(spots: pd.DataFrame, default: str) -> list[tuple[str, pd.DataFrame]]:
    """A saved table split by its ``layer`` column (``default`` where it is missing), in the
    order the layers first appear; each part has the spots-table columns only."""
    names = (
        spots["layer"].astype(object).where(spots["layer"].notna(), default).astype(str)
        if "layer" in spots
        else pd.Series([default] * len(spots))
    )
    parts = []
    for name in dict.fromkeys(names.tolist()):
        part = spots[(names == name).to_numpy()].reset_index(drop=True)
        parts.append((name, part[list(spot_table.SPOT_COLUMNS)]))
    return parts


class SpotSaver(QObject):
    """Debounced saving of the spots of every slide (module docstring)."""

    def __init__(
        self,
        source: SpotSource,
        *,
        on_status: Callable[[], None],
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._source = source
        self._on_status = on_status
        self._dirty: set[str] = set()  # slide keys with unsaved changes
        #: The last failed save's message (``None`` once a save succeeds).
        self.error: str | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.flush)

    def mark_dirty(self, slide_key: str) -> None:
        """The slide's spots changed: save them :data:`SAVE_DELAY_MS` after the last change."""
        self._dirty.add(slide_key)
        self._timer.start(SAVE_DELAY_MS)

    def is_dirty(self, slide_key: str) -> bool:
        """Whether the slide has unsaved changes."""
        return slide_key in self._dirty

    def flush(self) -> None:
        """Write every changed slide's spots to its project now."""
        for slide_key in list(self._dirty):
            self.save(slide_key)

    def save(self, slide_key: str) -> None:
        """Save the slide's spots: its open layers', plus the saved rows of layers no longer
        open that the user did not delete (see the module docstring)."""
        self._dirty.discard(slide_key)
        path = self._source.slide_paths.get(slide_key)
        if path is None:
            return
        try:
            live = self._source.slide_spots(slide_key)
            try:
                saved = project.load_spots(path)
            except InputFileError as exc:
                kept = project.set_aside_spots(path)
                _common.notify_error(
                    f"{exc}; it was kept as {kept} and a new table was written"
                    if kept is not None
                    else str(exc)
                )
                saved = spot_table.empty_spots()
            table = merge_saved(live, saved, self._source.deleted_ids(slide_key))
            project.save_spots(path, table)
        except (InputFileError, OSError, ValueError) as exc:
            self.error = f"{exc}"
            _common.notify_error(f"Cannot save the spots of {path} ({exc}); they are kept open")
            self._dirty.add(slide_key)  # retried on the next change
        else:
            self.error = None
        self._on_status()
