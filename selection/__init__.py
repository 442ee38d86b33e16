"""Subset builders. Importing the package registers every selector."""

from selection import basic, kcenter, strategies  # noqa: F401  (registration)
from selection.novelselect import novelselect
from selection.registry import PoolInputs, Selection, available, get_selector, register, select
from selection.submodular import mig, qdit

__all__ = ["PoolInputs", "Selection", "available", "get_selector", "mig", "novelselect", "qdit", "register",
           "select"]
