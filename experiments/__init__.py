"""Hydra entry points, the study pipeline, the artifact cache and the report."""
