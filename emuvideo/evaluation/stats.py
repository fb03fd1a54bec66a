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


def rate_record(k: int, n: int) -> dict:
    """{"k", "n", "rate", "low", "high"}: `k` of `n` with its Wilson 95% interval, as the reports write a rate.

    JSON has no NaN: with no trial (`n` 0) the rate and the bounds are None.
    """
    low, high = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": float(k / n) if n else None, "low": _finite(low), "high": _finite(high)}


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def pairwise_wins(scores_a, scores_b) -> list[float]:
    """Per pair, whether A beat B: 1 where `scores_a[i] > scores_b[i]`, 0.5 on a tie, 0 where it lost.

    The two lists are paired by position (the same prompt x seed); scores are any comparable numbers (the
    count of strict checks a video passes, for instance).
    """
    a, b = list(scores_a), list(scores_b)
    if len(a) != len(b):
        raise ValueError(f"win rates compare paired scores: got {len(a)} and {len(b)}")
    return [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)]


def win_rate(scores_a, scores_b) -> float:
    """How often A beats B over paired trials, a tie counting half.

    Identical scores give exactly 0.5; `win_rate(a, b) + win_rate(b, a) == 1`. NaN when there is no pair.
    """
    wins = pairwise_wins(scores_a, scores_b)
    return sum(wins) / len(wins) if wins else math.nan


def bootstrap_win_rate(scores_a, scores_b, level: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float, float]:
    """(win rate, low, high): `win_rate` with a percentile bootstrap interval over pairs (pairs resampled with
    replacement, `resamples` times, from a fixed seed, so the interval is reproducible)."""
    from .interpolation import bootstrap_interval  # imported here: it brings in PyAV for its other functions

    wins = pairwise_wins(scores_a, scores_b)
    low, high = bootstrap_interval(wins, level=level, resamples=resamples, seed=seed)
    return win_rate(scores_a, scores_b), low, high


__all__ = ["Z_95", "bootstrap_win_rate", "pairwise_wins", "rate_record", "wilson_interval", "win_rate"]
