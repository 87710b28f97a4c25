"""Sections for training and evaluation: an imported ``.h5ad`` plus its full-resolution slide."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputFileError


@dataclass
class Section:
    """One ST section: the AnnData (raw counts, spatial convention) and its opened slide."""

    name: str
    path: Path
    adata: Any
    slide: Any

    def pair(self) -> tuple[Any, Any]:
        return self.adata, self.slide

    @property
    def patient(self) -> str:
        """Patient id: ``metadata['patient']`` if recorded, else the library id's letters.

        The fallback follows her2st/STNet naming (``A1``, ``B2``, ``C3``: letter = patient).
        """
        from ..io import spatial

        _, lib = spatial.library(self.adata)
        patient = lib.get("metadata", {}).get("patient")
        if patient:
            return str(patient)
        letters = "".join(ch for ch in self.name if ch.isalpha())
        return letters or self.name


def load_section(path: str | os.PathLike[str]) -> Section:
    """Read an imported ``.h5ad`` and open the slide it refers to (µm/px from the AnnData)."""
    from ..io import spatial
    from ..io.slides import open_slide
    from ..io.st_datasets import read_st_dataset

    path = Path(path)
    adata = read_st_dataset(path)
    lib_id, _ = spatial.library(adata)
    image = spatial.source_image_path(adata, lib_id, relative_to=path)
    if image is None or not Path(image).exists():
        raise InputFileError(
            path,
            f"the full-resolution image of library {lib_id!r} is not available "
            f"({image or 'no source_image_path recorded'}); re-import with the image",
        )
    mpp = spatial.microns_per_pixel(adata, lib_id)
    slide = open_slide(image, mpp=mpp)
    if slide.mpp is None:
        raise InputFileError(
            path,
            "µm/px of the section's image unknown: import the section again giving its "
            "µm/px (e.g. histoexpress import st ... --mpp 0.5)",
        )
    return Section(name=lib_id, path=path, adata=adata, slide=slide)


def load_sections(paths: list[str | os.PathLike[str]]) -> list[Section]:
    sections = [load_section(p) for p in paths]
    names = [s.name for s in sections]
    if len(set(names)) != len(names):
        # keep names unique for reports (two files with the same library id)
        for k, s in enumerate(sections):
            s.name = f"{s.name}#{k}"
    return sections
