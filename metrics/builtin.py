"""Registry entries for the diversity metrics (thin adapters from MetricInputs to the plain functions)."""

from __future__ import annotations

from collections.abc import Sequence

from metrics.novelsum import distsum_cosine, novelsum, novelsum_grid
from metrics.registry import MetricInputs, register


@register("novelsum", needs=("embeddings", "reference"), family="NovelSum")
def _novelsum(inputs: MetricInputs, neighbors: int = 10, density_power: float = 0.5, distance_power: float = 1.0,
              mode: str = "reference", block_size: int = 1024, device: str = "cpu") -> float:
    return novelsum(inputs.embeddings, inputs.reference, neighbors=neighbors, density_power=density_power,
                    distance_power=distance_power, mode=mode, block_size=block_size, device=device)


@register("novelsum_grid", needs=("embeddings", "reference"), family="NovelSum")
def _novelsum_grid(inputs: MetricInputs, neighbors: Sequence[int] = (5, 10),
                   density_powers: Sequence[float] = (0.0, 0.25, 0.5),
                   distance_powers: Sequence[float] = (0.0, 1.0, 2.0), mode: str = "reference",
                   block_size: int = 1024, device: str = "cpu") -> dict[str, float]:
    return novelsum_grid(inputs.embeddings, inputs.reference, neighbors=neighbors, density_powers=density_powers,
                         distance_powers=distance_powers, mode=mode, block_size=block_size, device=device)


@register("distsum_cosine", needs=("embeddings",), family="distance")
def _distsum_cosine(inputs: MetricInputs) -> float:
    return distsum_cosine(inputs.embeddings)
