"""Confidence intervals for the rates the evaluation reports."""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # standard normal quantile at 0.975: a two-sided 95% interval


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927), 95% by default.

    Unlike the normal approximation p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and does not collapse to a
    point at 0% or 100% (0 of 10 gives 0-28%, not 0-0%). NaNs when n is 0.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 and n the bound is exactly 0 or 1; rounding must not leave it a hair off.
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


__all__ = ["Z_95", "wilson_interval"]
