"""Inference: tiled whole-slide prediction, the dense-map store and circle aggregation."""
