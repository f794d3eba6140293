"""Measurement: preprocessing, MRI standardisation, and the feature and fit-method registries."""
