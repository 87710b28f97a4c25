"""Reading slides and spatial-transcriptomics data, writing results (no Qt, no napari)."""
