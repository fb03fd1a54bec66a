"""The project's experiments as library code: each module defines one experiment's arms or methods, how it
trains and judges them, and its statistics and tables; `scripts/` holds their command lines."""


def spread(prompts: list, limit: int | None) -> list:
    """`limit` prompts spread evenly over the set (every attribute mix, not the first pairs only)."""
    if limit is None or limit >= len(prompts):
        return prompts
    return [prompts[i * len(prompts) // limit] for i in range(limit)]
