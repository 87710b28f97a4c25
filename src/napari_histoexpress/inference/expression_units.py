"""How predicted and measured expression values are named for the user (Qt-free).

Every value this package shows — a heatmap pixel, a spot's colour — is
``log1p(counts / total counts · target_sum)``, the scanpy ``normalize_total`` +
``log1p`` convention with the model's ``target_sum`` (10 000 by default,
:func:`.measured_vs_predicted.model_target_sum`). The legend and colour bars say so in the
field's usual short words: "log1p counts per 10k".
"""

from __future__ import annotations

import math


def per_total(target_sum: float) -> str:
    """``10000`` → ``"10k"``, ``1e6`` → ``"1M"``, ``2500`` → ``"2500"``."""
    value = float(target_sum)
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= size and math.isclose(value / size, round(value / size)):
            return f"{round(value / size)}{suffix}"
    return f"{value:g}"


def expression_unit(target_sum: float = 1e4) -> str:
    """The unit of expression values normalised to ``target_sum``: "log1p counts per 10k"."""
    return f"log1p counts per {per_total(target_sum)}"
