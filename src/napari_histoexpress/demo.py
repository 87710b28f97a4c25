"""``histoexpress demo``: the package's main job on the bundled synthetic sample.

Steps: locate (or deterministically regenerate) the sample slide, open it lazily as a
pyramid, write an AnnData of its measured spots with the full-resolution image path made
absolute, and a PNG thumbnail with the spots drawn at their true 55 µm diameter.
"""

from __future__ import annotations

from pathlib import Path


def run_demo(out: Path) -> dict[str, Path]:
    import anndata as ad

    from .io import spatial
    from .io.export import write_h5ad_atomic
    from .io.overview import spots_overview, write_png
    from .io.slides import open_slide
    from .io.synthetic import sample_paths

    out.mkdir(parents=True, exist_ok=True)
    paths = sample_paths()
    slide = open_slide(paths["image"])
    levels = " ".join(f"{a.shape[1]}x{a.shape[0]}" for a in slide.levels)
    print(
        f"slide {paths['image'].name}: {len(slide.levels)} levels ({levels}), "
        f"{slide.mpp:.3g} µm/px ({slide.mpp_source})"
    )
    adata = ad.read_h5ad(paths["spots"])
    _lib_id, lib = spatial.library(adata)
    lib.setdefault("metadata", {})["source_image_path"] = str(Path(paths["image"]).resolve())
    spots_path = write_h5ad_atomic(adata, out / "sample_spots.h5ad")
    png = write_png(spots_overview(slide, adata, color_by="ERBB2"), out / "sample_spots.png")
    print(
        f"{adata.n_obs} spots x {adata.n_vars} genes, spot diameter "
        f"{spatial.spot_diameter_px(adata) * slide.mpp:.0f} µm"
    )
    return {"spots": spots_path, "thumbnail": png, "slide": Path(paths["image"])}
