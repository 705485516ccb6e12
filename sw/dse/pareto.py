"""Pareto fronts of two minimised objectives."""

from __future__ import annotations

from typing import Sequence

__all__ = ["pareto_front"]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, both coordinates minimised, sorted by
    the first coordinate.

    A point dominates another if it is no worse in both coordinates and better in one. Of
    equal points the first (lowest index) is kept, so the front has no duplicates.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i))
    front: list[int] = []
    best_second = float("inf")
    for i in order:
        # In ascending first coordinate (ties: ascending second), a point is on the front
        # exactly when its second coordinate beats every earlier one.
        if points[i][1] < best_second:
            front.append(i)
            best_second = points[i][1]
    return front
