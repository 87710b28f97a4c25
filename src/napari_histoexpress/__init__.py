"""napari-histoexpress: spatial gene expression from H&E whole-slide images.

The package is a plain Python library (``io``, ``models``, ``training``,
``inference``) with a CLI (``histoexpress``) and a thin napari plugin surface
(``_reader``, ``_sample_data``, ``widgets``). Compute modules never import Qt or
napari.
"""

from importlib.metadata import PackageNotFoundError, version

from . import _llvm_guard

# Before anything imports torchvision: triton's LLVM must not bind to Mesa's (segfault in a
# napari viewer on a software-OpenGL display). See _llvm_guard.
_llvm_guard.install()

try:
    __version__ = version("napari-histoexpress")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "color_spots_by", "gene_heatmap_layer_data", "set_microns_per_pixel"]


def __getattr__(name: str):  # lazy: keep `import napari_histoexpress` light
    if name in ("set_microns_per_pixel", "color_spots_by", "gene_heatmap_layer_data"):
        from . import _layers

        return getattr(_layers, name)
    raise AttributeError(name)
