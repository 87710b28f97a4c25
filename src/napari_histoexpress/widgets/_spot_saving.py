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

**Bins** (the bins layers of :mod:`._spot_bins`) go to the project's bins table
(:func:`napari_histoexpress.project.save_spot_bins`, a compact columnar zip) by the same
rules, with ids compared as numbers (:func:`merge_saved_bins`); it is rewritten only when
the slide's bins changed since the last save (a drawn spot moved beside a million bins
writes the small CSV only), in a background thread from a snapshot taken at the save
(:meth:`SpotSaver.flush` waits for it). A saved CSV row held by an open bins layer (a large
grid of an older project restored as bins) leaves the CSV only after the bins table holding
it was written, so a failed save never leaves a table that lost spots.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from qtpy.QtCore import QObject, QTimer, Signal

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

    def slide_bins(self, slide_key: str) -> pd.DataFrame:
        """The bins of the slide's open bins layers (``id_number``, ``layer`` columns)."""
        ...

    def bin_numbers(self, slide_key: str) -> np.ndarray:
        """The id numbers held by the slide's open bins layers."""
        ...

    def deleted_numbers(self, slide_key: str) -> np.ndarray:
        """The id numbers of the slide's bins the user deleted."""
        ...

    def bins_version(self, slide_key: str) -> int:
        """How many times the slide's bins changed."""
        ...


def merge_saved(live: pd.DataFrame, saved: pd.DataFrame, deleted: set[str]) -> pd.DataFrame:
    """The table to save: the open layers' spots ``live`` plus the ``saved`` rows that are
    neither open nor ``deleted`` (spots of layers that were removed)."""
    detached = saved[~saved["id"].isin(set(live["id"]) | deleted)]
    return pd.concat([live, detached], ignore_index=True) if len(detached) else live


def merge_saved_bins(live: pd.DataFrame, saved: pd.DataFrame, held: np.ndarray) -> pd.DataFrame:
    """The bins table to save: the open bins layers' bins ``live`` plus the ``saved`` bins
    whose id numbers are not ``held`` (by an open layer, or deleted), all as numbers."""
    detached = saved[~np.isin(saved["id_number"].to_numpy(), held)]
    return pd.concat([live, detached], ignore_index=True) if len(detached) else live


def saved_bin_layers(bins: pd.DataFrame, default: str) -> list[tuple[str, pd.DataFrame]]:
    """A saved bins table split by its ``layer`` column (``default`` where it is missing),
    in the order the layers first appear (vectorised: one pass per layer)."""
    if "layer" in bins:
        names = bins["layer"].astype(object).where(bins["layer"].notna(), default)
    else:
        names = pd.Series(default, index=bins.index, dtype=object)
    codes, uniques = pd.factorize(names.astype(str))
    return [
        (str(name), bins[codes == k].drop(columns="layer", errors="ignore").reset_index(drop=True))
        for k, name in enumerate(uniques)
    ]


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


@dataclass
class _BinsJob:
    """One write of a slide's bins table, made in a background thread."""

    path: Path
    version: int
    live: pd.DataFrame  # snapshot of the open bins layers (taken in the GUI thread)
    held: np.ndarray  # id numbers that saved rows may not keep
    thread: threading.Thread | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # messages for the GUI thread

    def run(self) -> None:
        try:
            saved = _load_bins(self.path, self.notes)
            project.save_spot_bins(self.path, merge_saved_bins(self.live, saved, self.held))
        except Exception as exc:  # any failure is reported, never taken for a save
            self.error = str(exc) or type(exc).__name__


def _load_bins(path: Path, notes: list[str]) -> pd.DataFrame:
    """The saved bins (as numbers); an unreadable table is set aside first (and said so)."""
    try:
        return project.load_spot_bins(path, ids=False)
    except InputFileError as exc:
        kept = project.set_aside_spots(path, project.BINS_FILE)
        notes.append(
            f"{exc}; it was kept as {kept} and a new table was written" if kept else str(exc)
        )
        return project.load_spot_bins(path, ids=False)  # empty: it was set aside


class SpotSaver(QObject):
    """Debounced saving of the spots of every slide (module docstring).

    The bins table of a slide is written in a background thread (a snapshot of the bins
    is taken first, in the GUI thread): a million bins take a second or two to merge and
    compress, and the viewer keeps responding meanwhile. :meth:`flush` waits for those
    writes, so everything is on disk when it returns.
    """

    #: ``(slide key)``: a background bins write ended (delivered in the GUI thread).
    _bins_written = Signal(str)

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
        self._bins_saved: dict[str, int] = {}  # slide key → bins version last saved
        self._bins_jobs: dict[str, _BinsJob] = {}  # slide key → the write in progress
        #: The last failed save's message (``None`` once a save succeeds).
        self.error: str | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._on_timer)
        # the thread emits just before it ends: joining it then takes no time
        self._bins_written.connect(lambda key: self._collect(key, block=True))

    def mark_dirty(self, slide_key: str) -> None:
        """The slide's spots changed: save them :data:`SAVE_DELAY_MS` after the last change."""
        self._dirty.add(slide_key)
        self._timer.start(SAVE_DELAY_MS)

    def is_dirty(self, slide_key: str) -> bool:
        """Whether the slide has unsaved changes."""
        return slide_key in self._dirty

    def _on_timer(self) -> None:
        for slide_key in list(self._dirty):
            self.save(slide_key, wait=False)

    def flush(self) -> None:
        """Write every changed slide's spots to its project now (bins included: waits for
        the background writes)."""
        for slide_key in list(self._dirty):
            self.save(slide_key)
        self.wait()

    def wait(self) -> None:
        """Wait for the background bins writes (their errors are then reported)."""
        for slide_key in list(self._bins_jobs):
            self._collect(slide_key, block=True)

    def save(self, slide_key: str, *, wait: bool = True) -> None:
        """Save the slide's spots: its open layers', plus the saved rows of layers no longer
        open that the user did not delete (see the module docstring); the bins table when
        they changed (in the background unless ``wait``)."""
        self._dirty.discard(slide_key)
        path = self._source.slide_paths.get(slide_key)
        if path is None:
            return
        try:
            live = self._source.slide_spots(slide_key)
            saved = self._load(path)
            table = merge_saved(live, saved, self._source.deleted_ids(slide_key))
            kept = _drop_held(table, live, self._source.bin_numbers(slide_key))
            # rows that moved into a bins layer leave the CSV only once the bins are written
            self._save_bins(slide_key, path, wait=wait or len(kept) < len(table))
            project.save_spots(path, kept)
        except (InputFileError, OSError, ValueError) as exc:
            self._failed(slide_key, path, str(exc))
        else:
            if slide_key not in self._bins_jobs:
                self.error = None
        self._on_status()

    def _failed(self, slide_key: str, path: Path, message: str) -> None:
        self.error = message
        _common.notify_error(f"Cannot save the spots of {path} ({message}); they are kept open")
        self._dirty.add(slide_key)  # retried on the next change

    def _save_bins(self, slide_key: str, path: Path, *, wait: bool) -> None:
        """Write the slide's bins table when its bins changed since the last save."""
        version = self._source.bins_version(slide_key)
        if self._bins_saved.get(slide_key, 0) == version:
            return
        if slide_key in self._bins_jobs:  # one write at a time; this change comes next
            self._collect(slide_key, block=True)
            if self._bins_saved.get(slide_key, 0) == version:
                return
        live = self._source.slide_bins(slide_key)
        drawn = spot_table.id_numbers(self._source.slide_spots(slide_key)["id"])
        held = np.concatenate(
            [
                live["id_number"].to_numpy(dtype=np.int64),
                self._source.deleted_numbers(slide_key),
                drawn[drawn >= 0],
            ]
        )
        job = _BinsJob(path=path, version=version, live=live, held=held)
        self._bins_jobs[slide_key] = job
        if wait:
            job.run()
            self._collect(slide_key)
            if job.error is not None:
                raise InputFileError(project.spot_bins_path(path), job.error)
            return
        job.thread = threading.Thread(
            target=self._run_job, args=(slide_key, job), name="save-bins", daemon=True
        )
        job.thread.start()

    def _run_job(self, slide_key: str, job: _BinsJob) -> None:
        job.run()
        with contextlib.suppress(RuntimeError):  # the saver was deleted meanwhile
            self._bins_written.emit(slide_key)

    def _collect(self, slide_key: str, block: bool = False) -> None:
        """Take in the slide's bins write if it has finished (with ``block``: wait for it)."""
        job = self._bins_jobs.get(slide_key)
        if job is None:
            return
        if job.thread is not None:
            if not block and job.thread.is_alive():
                return
            job.thread.join()
        del self._bins_jobs[slide_key]
        for note in job.notes:
            _common.notify_error(note)
        if job.error is not None:
            if job.thread is not None:  # a synchronous write raises in save()
                self._failed(slide_key, job.path, job.error)
                self._on_status()
            return
        self._bins_saved[slide_key] = job.version
        if job.thread is not None:
            if self._source.bins_version(slide_key) != job.version:
                self.mark_dirty(slide_key)  # changed while it was written: again
            elif self.error is not None and slide_key not in self._dirty:
                self.error = None
            self._on_status()

    @staticmethod
    def _load(path: Path) -> pd.DataFrame:
        """The saved spots table; an unreadable one is set aside first (and an empty
        table returned)."""
        try:
            return project.load_spots(path, bins=False)
        except InputFileError as exc:
            kept = project.set_aside_spots(path)
            _common.notify_error(
                f"{exc}; it was kept as {kept} and a new table was written"
                if kept is not None
                else str(exc)
            )
            return spot_table.empty_spots()


def _drop_held(table: pd.DataFrame, live: pd.DataFrame, bin_numbers: np.ndarray) -> pd.DataFrame:
    """``table`` without its saved rows (not in ``live``) whose ids open bins layers hold."""
    if not len(bin_numbers) or len(table) == len(live):
        return table
    rest = table.iloc[len(live) :]
    held = np.isin(spot_table.id_numbers(rest["id"]), bin_numbers)
    if not held.any():
        return table
    return pd.concat([live, rest[~held]], ignore_index=True)
