"""napari dock widgets: thin Qt front-ends over the compute layers."""
