"""napari dock widgets (all Qt lives here). Thin: they call io/, models/, inference/.

Imported lazily so that ``import napari_histoexpress`` never imports Qt.
"""

from __future__ import annotations

from typing import Any

_WIDGETS = {
    "PredictWidget": "._predict",
    "GenesWidget": "._genes",
    "SpotsWidget": "._spots",
    "ExportWidget": "._export",
    "ZeroShotWidget": "._zero_shot",
}

__all__ = list(_WIDGETS)


def __getattr__(name: str) -> Any:
    if name in _WIDGETS:
        import importlib

        return getattr(importlib.import_module(_WIDGETS[name], __name__), name)
    raise AttributeError(name)
