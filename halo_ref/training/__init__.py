"""Training: configuration, the loop, optimisers, data."""
