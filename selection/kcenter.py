"""k-center greedy (farthest-first traversal) in cosine distance.

Keeps each row's distance to its nearest selected centre, so a step is one matrix-vector product and an O(N)
minimum rather than a distance matrix to the whole selected set.
"""

from __future__ import annotations

import numpy as np
import torch

from metrics.knn import unit_rows
from selection.registry import PoolInputs, register


def first_pick(pool_size: int, seed: int) -> int:
    """The authors' first pick: ``np.random.seed(seed); np.random.randint(0, n)``, without the global state."""
    return int(np.random.RandomState(seed).randint(0, pool_size))


@register("kcenter", needs=("embeddings",))
def kcenter_subset(pool: PoolInputs, n: int, seed: int, device: str = "cpu") -> list[int]:
    """Greedy k-center: start at a seeded random row, then repeatedly take the row farthest from all centres."""
    unit = unit_rows(pool.embeddings, device)
    picks = [first_pick(pool.size, seed)]
    nearest = 1.0 - unit @ unit[picks[0]]
    nearest[picks[0]] = -torch.inf
    for _ in range(1, n):
        nxt = int(torch.argmax(nearest))
        picks.append(nxt)
        nearest = torch.minimum(nearest, 1.0 - unit @ unit[nxt])
        nearest[nxt] = -torch.inf
    return picks
