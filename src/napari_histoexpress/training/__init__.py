"""Training: spot datasets, losses, the training loop, cross-validation and metrics."""
