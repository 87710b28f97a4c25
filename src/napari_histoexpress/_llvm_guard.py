"""Load triton's LLVM safely in a process that already runs Mesa's LLVM (Linux).

Why: ``import timm`` imports torchvision, which imports ``torch._dynamo``, which imports
``triton`` when it is installed (every CUDA build of torch ships it). ``triton._C.libtriton``
links its own copy of LLVM statically but exports its symbols. When a napari viewer has
already created an OpenGL context on a software renderer (Mesa llvmpipe: Xvfb, remote
desktops, VMs, machines without a GPU driver), Mesa's ``libLLVM-*.so`` is loaded first, and
the dynamic linker binds libtriton's LLVM references to *Mesa's* LLVM. libtriton's static
constructors then write into Mesa's LLVM globals and the process dies with a segmentation
fault (seen: ``llvm::DebugCounter`` in ``_GLOBAL__sub_I_PassBuilder.cpp``). It happens the
first time a user clicks Predict, in whatever thread imports torchvision.

Fix: an import hook (:func:`install`, run when ``napari_histoexpress`` is imported) that loads
``triton._C.libtriton`` with ``RTLD_DEEPBIND`` when an LLVM or Mesa driver is already mapped
into the process, so libtriton resolves its symbols in itself first and the two LLVMs never
meet. Nothing changes otherwise: when no LLVM is loaded yet (the command line, scripts, or a
napari session that imported torch before drawing anything) triton loads with the
interpreter's usual flags, and on platforms without ``RTLD_DEEPBIND`` (macOS, Windows) the hook
is not installed. The plugin itself never needs triton (it uses no ``torch.compile``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType

#: The extension module whose loading crashes beside Mesa's LLVM.
TRITON_EXTENSION = "triton._C.libtriton"
#: Mapped objects that mean "an LLVM is already in this process" (Mesa's LLVM, its drivers).
LLVM_MARKERS = ("libLLVM", "libgallium", "_dri.so", "swrast")


def llvm_loaded(maps: str | None = None) -> bool:
    """Whether a shared LLVM (or a Mesa driver that uses one) is mapped into this process."""
    if maps is None:
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
                maps = fh.read()
        except OSError:
            return False
    return any(marker in maps for marker in LLVM_MARKERS)


class _DeepBindLoader(importlib.abc.Loader):
    """Wraps an extension module loader: ``create_module`` under ``RTLD_DEEPBIND``."""

    def __init__(self, inner: importlib.machinery.ExtensionFileLoader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        if not llvm_loaded():
            return self.inner.create_module(spec)
        flags = sys.getdlopenflags()
        sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
        try:
            return self.inner.create_module(spec)
        finally:
            sys.setdlopenflags(flags)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)


class _TritonFinder(importlib.abc.MetaPathFinder):
    """Finds ``triton._C.libtriton`` as usual and hands it to :class:`_DeepBindLoader`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TRITON_EXTENSION:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            spec.loader = _DeepBindLoader(spec.loader)
        return spec


def install() -> bool:
    """Install the hook once (Linux only); returns whether it is in place."""
    if not sys.platform.startswith("linux") or not hasattr(os, "RTLD_DEEPBIND"):
        return False
    if not any(isinstance(f, _TritonFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TritonFinder())
    return True


def installed() -> bool:
    return any(isinstance(f, _TritonFinder) for f in sys.meta_path)


__all__ = ["LLVM_MARKERS", "TRITON_EXTENSION", "install", "installed", "llvm_loaded"]
