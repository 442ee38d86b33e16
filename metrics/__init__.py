"""Diversity metrics. Importing the package registers every metric."""

from divcore.errors import InputError
from metrics import builtin  # noqa: F401  (registration)
from metrics.baselines import partition_entropy
from metrics.mig import mig_information
from metrics.novelsum import distsum_cosine, grid_key, novelsum, novelsum_grid
from metrics.registry import MetricInputs, available, compute, get_metric, register

__all__ = ["InputError", "MetricInputs", "available", "compute", "distsum_cosine", "get_metric", "grid_key",
           "mig_information", "novelsum", "novelsum_grid", "partition_entropy", "register"]
