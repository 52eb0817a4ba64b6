"""Experiments: models, data and the training runner."""
