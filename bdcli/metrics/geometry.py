"""Representation geometry: label centroids and the Stop Distance (SD).

SD (maximum-entropy paper, section 4.2) is the squared Euclidean distance ||h_i - h_j||^2 between the
centroids of the representations of two label groups of clean samples.
"""

from __future__ import annotations

import itertools
import random

import torch

SD_PAIRS = ("random", "mean")


def centroids(reps: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """[num_labels, dim] group means; a label with no row gets NaN so that misuse is visible."""
    reps = reps.double()
    out = torch.full((num_labels, reps.shape[1]), float("nan"), dtype=torch.float64)
    for c in range(num_labels):
        rows = reps[labels == c]
        if len(rows):
            out[c] = rows.mean(dim=0)
    return out


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).sum())


def pick_label_pair(num_labels: int, seed: int) -> tuple[int, int]:
    """The paper's multi-class rule: two labels picked at random (seeded, fixed for a whole run)."""
    pair = sorted(random.Random(seed).sample(range(num_labels), 2))
    return pair[0], pair[1]


def stop_distance(
    reps: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    pair: tuple[int, int] | None = None,
) -> float:
    """SD between the centroids of ``pair`` (a binary task's two labels by default), or, with
    ``pair=None`` on more than two labels, the mean SD over all label pairs."""
    cents = centroids(reps, labels, num_labels)
    if pair is None and num_labels == 2:
        pair = (0, 1)
    if pair is not None:
        return squared_distance(cents[pair[0]], cents[pair[1]])
    pairs = list(itertools.combinations(range(num_labels), 2))
    return sum(squared_distance(cents[i], cents[j]) for i, j in pairs) / len(pairs)


def within_group_variance(reps: torch.Tensor) -> float:
    """The paper's within-group dissimilarity: the mean over dimensions of the per-dimension variance."""
    return float(reps.double().var(dim=0, unbiased=False).mean())


GEOMETRY_GROUPS = ("target", "nontarget", "poison")


def group_geometry(groups: dict[str, torch.Tensor | None]) -> dict[str, float | None]:
    """The maximum-entropy paper's Figures 2-4 at one point: the squared Euclidean distance between the
    centroids of each pair of groups (the Stop Distance's measure) and each group's within-group
    variance. Groups are clean target-label rows, clean non-target rows and poisoned rows; a group that
    is absent (None or no row) gets None for every number it enters."""
    present = {g: r.double() for g, r in groups.items() if r is not None and len(r)}
    out: dict[str, float | None] = {}
    for a, b in itertools.combinations(GEOMETRY_GROUPS, 2):
        out[f"d_{a}_{b}"] = (squared_distance(present[a].mean(0), present[b].mean(0))
                             if a in present and b in present else None)
    for g in GEOMETRY_GROUPS:
        out[f"var_{g}"] = within_group_variance(present[g]) if g in present else None
    return out
