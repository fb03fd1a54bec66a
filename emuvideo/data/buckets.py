"""Buckets: clips of several sizes and lengths in one dataset, batched so that every batch stacks.

`ClipDataset(..., frame_buckets=[...], resolution_buckets=[...])` gives each clip one bucket
(num_frames, height, width) with `assign_bucket`; `BucketBatchSampler(dataset.buckets, batch_size)`
batches indices of the same bucket.
"""

import math
import warnings
from collections import defaultdict
from typing import Iterator, Optional, Sequence

import numpy as np
import torch


def check_buckets(num_frames: int, height: int, width: int, frame_buckets: Optional[Sequence[int]],
                  resolution_buckets: Optional[Sequence[tuple[int, int]]]) -> tuple[list[int], list[tuple[int, int]]]:
    """The sorted frame counts and the (h, w) sizes a clip may be assigned; by default only
    num_frames and (height, width)."""
    frame_counts = sorted(set(frame_buckets)) if frame_buckets is not None else [num_frames]
    if num_frames not in frame_counts or any(not isinstance(t, int) or t < 1 for t in frame_counts):
        raise ValueError(f"frame_buckets must be ints >= 1 containing num_frames={num_frames}, "
                         f"got {frame_buckets}")
    resolutions = [tuple(r) for r in resolution_buckets] if resolution_buckets else [(height, width)]
    if any(len(r) != 2 or min(r) < 1 for r in resolutions):
        raise ValueError(f"resolution_buckets must be (height, width) pairs >= 1, got {resolution_buckets}")
    return frame_counts, resolutions


def nearest_resolution(width: int, height: int, resolutions: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The (h, w) bucket whose aspect ratio is closest to the clip's (in log space: 2:1 and 1:2
    are equally far from 1:1)."""
    aspect = math.log(width / height)
    return min(resolutions, key=lambda hw: abs(math.log(hw[1] / hw[0]) - aspect))


def assign_bucket(record, frame_counts: Sequence[int], resolutions: Sequence[tuple[int, int]]) -> tuple[int, int, int]:
    """(num_frames, height, width) of a `ClipRecord`: the resolution closest in aspect ratio and the largest
    frame count the clip fills; an image is a still clip of the largest frame count unless one is 1."""
    res_h, res_w = nearest_resolution(record.width, record.height, resolutions)
    fill = [t for t in frame_counts if t <= record.num_frames]
    frames = frame_counts[-1] if record.is_image and 1 not in frame_counts else fill[-1]
    return frames, res_h, res_w


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of indices that share a bucket, so every batch stacks.

    Use as `DataLoader(dataset, batch_sampler=BucketBatchSampler(dataset.buckets, batch_size))`.
    The order depends only on (seed, epoch): call `set_epoch` each epoch for a new shuffle.

    Args:
        buckets: one hashable bucket per dataset index, e.g. `ClipDataset.buckets`.
        batch_size: indices per batch.
        shuffle: shuffle within buckets and the order of batches.
        drop_last: drop each bucket's last incomplete batch (warns how many items that drops).
        seed: shuffle seed.
    """

    def __init__(self, buckets: Sequence, batch_size: int, shuffle: bool = True, drop_last: bool = False,
                 seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.groups: dict = defaultdict(list)
        for index, bucket in enumerate(buckets):
            self.groups[bucket].append(index)
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.epoch = 0
        dropped = {b: len(ix) % batch_size for b, ix in self.groups.items() if len(ix) % batch_size}
        if drop_last and dropped:
            warnings.warn(f"drop_last=True drops {sum(dropped.values())} of {len(buckets)} items every epoch "
                          f"(bucket sizes not a multiple of batch_size={batch_size}: "
                          + ", ".join(f"{b}: {n} left over" for b, n in dropped.items()) + ")", stacklevel=2)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for indices in self.groups.values():
            order = [indices[i] for i in rng.permutation(len(indices))] if self.shuffle else indices
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return iter(batches)

    def __len__(self) -> int:
        rounding = (lambda n: n // self.batch_size) if self.drop_last else (lambda n: -(-n // self.batch_size))
        return sum(rounding(len(ix)) for ix in self.groups.values())
