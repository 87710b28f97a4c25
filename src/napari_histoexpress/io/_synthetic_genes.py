"""Per-compartment gene expression profiles of the synthetic tissue (private helper).

The table gives, for each gene, the expected UMI count that one **Visium spot (55 µm
diameter, 2375.8 µm²) lying entirely in one compartment** would capture. Dividing by the
spot area gives the density in transcripts per µm² that :mod:`.synthetic` uses
(``SyntheticTissue.profiles``). Spot-level units were chosen because they are the numbers
people know: a pure-tumour spot collects ~3000 UMIs from these 36 genes (real Visium spots
collect 5k–30k UMIs over ~18k genes, the markers being among the highest).

Biology (HER2+ breast cancer, the her2st data set the package is developed on):
tumour = luminal/HER2 epithelium (ERBB2 and its amplicon neighbour GRB7, keratins, EPCAM…);
stroma = fibroblasts/myofibroblasts (collagens, DCN, LUM, SPARC, ACTA2, POSTN…);
immune = lymphoid aggregate with B/T cells, plasma cells and macrophages (PTPRC, MHC-II,
CD3E, MS4A1, IGKC, LYZ, CD68); fat = adipocytes (ADIPOQ, PLIN1, FABP4, LEP, CFD), which have
little RNA per area; necrosis = degraded RNA, a tenth of the tumour's plus neutrophil LYZ;
background (glass) = 0. Markers leak at a few per cent into other compartments (infiltrating
cells, ambient RNA), as in real data.
"""

from __future__ import annotations

import numpy as np

#: Area of a 55 µm Visium spot in µm², the unit of the table below.
SPOT_AREA_UM2 = float(np.pi * 27.5**2)

#: gene -> UMIs per pure spot for (background, stroma, tumour, immune, fat, necrosis)
_TABLE: dict[str, tuple[float, float, float, float, float, float]] = {
    # tumour (HER2+ luminal epithelium)
    "ERBB2": (0, 4, 200, 3, 1, 20),
    "GRB7": (0, 1, 60, 1, 0, 6),
    "KRT19": (0, 5, 250, 3, 1, 25),
    "KRT8": (0, 5, 220, 3, 1, 22),
    "KRT18": (0, 4, 180, 3, 1, 18),
    "KRT7": (0, 2, 100, 1, 0, 10),
    "EPCAM": (0, 2, 120, 2, 0, 12),
    "CDH1": (0, 2, 90, 1, 0, 9),
    "MUC1": (0, 1, 80, 1, 0, 8),
    "CD24": (0, 3, 100, 4, 1, 10),
    "SCGB2A2": (0, 2, 80, 1, 0, 8),
    "MKI67": (0, 0.5, 15, 2, 0, 1),
    # stroma (fibroblasts, myofibroblasts)
    "COL1A1": (0, 250, 12, 10, 15, 5),
    "COL1A2": (0, 220, 10, 8, 14, 4),
    "COL3A1": (0, 230, 10, 10, 18, 4),
    "DCN": (0, 150, 5, 8, 20, 2),
    "LUM": (0, 130, 5, 6, 12, 2),
    "FN1": (0, 120, 15, 10, 8, 6),
    "SPARC": (0, 140, 20, 8, 10, 6),
    "ACTA2": (0, 60, 4, 3, 6, 1),
    "POSTN": (0, 80, 6, 2, 3, 2),
    "VIM": (0, 150, 10, 80, 30, 5),
    # immune (lymphoid aggregate, plasma cells, macrophages)
    "PTPRC": (0, 6, 3, 80, 1, 4),
    "CD74": (0, 20, 30, 300, 5, 10),
    "HLA-DRA": (0, 12, 20, 200, 3, 8),
    "CD3E": (0, 2, 1, 40, 0, 1),
    "MS4A1": (0, 1, 0, 40, 0, 0),
    "IGKC": (0, 30, 10, 400, 5, 10),
    "LYZ": (0, 5, 3, 60, 2, 30),
    "CD68": (0, 4, 2, 40, 2, 8),
    # fat (adipocytes)
    "ADIPOQ": (0, 1, 0, 0, 40, 0),
    "PLIN1": (0, 1, 0, 0, 50, 0),
    "FABP4": (0, 8, 1, 2, 120, 1),
    "LEP": (0, 0, 0, 0, 15, 0),
    "CFD": (0, 20, 1, 2, 80, 1),
    # housekeeping (everywhere in tissue; fat cells have little RNA per area)
    "ACTB": (0, 150, 160, 180, 30, 15),
    "GAPDH": (0, 60, 100, 80, 15, 10),
    "MALAT1": (0, 400, 420, 380, 80, 40),
    "B2M": (0, 150, 150, 300, 30, 15),
}

#: The compartment each gene marks ("housekeeping" for the ubiquitous ones).
GENE_GROUP: dict[str, str] = {}
for _g in list(_TABLE)[:12]:
    GENE_GROUP[_g] = "tumour"
for _g in list(_TABLE)[12:22]:
    GENE_GROUP[_g] = "stroma"
for _g in list(_TABLE)[22:30]:
    GENE_GROUP[_g] = "immune"
for _g in list(_TABLE)[30:35]:
    GENE_GROUP[_g] = "fat"
for _g in list(_TABLE)[35:]:
    GENE_GROUP[_g] = "housekeeping"

GENES: list[str] = list(_TABLE)


def profiles_per_um2() -> np.ndarray:
    """``(n_compartments, n_genes)`` float64 expected transcripts per µm²."""
    table = np.array([_TABLE[g] for g in GENES], dtype=np.float64)  # (genes, compartments)
    return table.T / SPOT_AREA_UM2
