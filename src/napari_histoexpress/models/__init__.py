"""Models: backbones, PixNet and the registry that maps model names to classes."""
