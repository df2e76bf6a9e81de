"""The global example order: which example goes to which host at which step, independent of topology.

Training reads an endless stream of global positions ``p = step * global_batch + j``; position ``p``
is in epoch ``p // N`` at rank ``p % N`` of that epoch's seeded permutation, so epochs roll over
seamlessly inside a batch and ``start_step`` is pure arithmetic (nothing skipped is decoded).
Each host takes the contiguous slice ``[h*b, (h+1)*b)`` of every global batch (b = global / hosts).
Each example gets a stateless seed ``(seed, epoch * N + index)``: a pure function of
(seed, epoch, example index).
"""

from __future__ import annotations

import threading

import numpy as np


def host_batch_size(global_batch_size: int, process_count: int, device_count: int) -> int:
    """Per-host batch; ValueError unless the global batch splits evenly over hosts and devices."""
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}.")
    if global_batch_size % process_count or global_batch_size % device_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be divisible by the process count ({process_count}) and "
            f"the number of devices on the data axis ({device_count})."
        )
    return global_batch_size // process_count


class TrainOrder:
    """Host slice of the seeded per-epoch permutation, for any step, in O(batch) after one shuffle per epoch."""

    def __init__(self, num_examples: int, global_batch_size: int, seed: int, process_index: int, process_count: int):
        if num_examples <= 0:
            raise ValueError("Cannot train on an empty split.")
        self.num_examples = num_examples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.host_batch_size = global_batch_size // process_count
        self._host_offset = process_index * self.host_batch_size
        self._permutations: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def permutation(self, epoch: int) -> np.ndarray:
        """The example order of ``epoch``, cached for the 4 most recently used epochs. Least recently *used*, not
        lowest-numbered, is evicted: parallel readers of a tiny dataset run several epochs ahead of each other."""
        with self._lock:
            permutation = self._permutations.pop(epoch, None)
            if permutation is None:
                permutation = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples).astype(np.int64)
            self._permutations[epoch] = permutation  # Dicts keep insertion order: most recently used last.
            while len(self._permutations) > 4:
                del self._permutations[next(iter(self._permutations))]
            return permutation

    def host_examples(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(example indices [b], per-example stateless seeds [b, 2]) of this host at global step ``step``."""
        positions = step * self.global_batch_size + self._host_offset + np.arange(self.host_batch_size, dtype=np.int64)
        epochs, ranks = np.divmod(positions, self.num_examples)
        indices = np.empty_like(positions)
        for epoch in np.unique(epochs):
            selected = epochs == epoch
            indices[selected] = self.permutation(int(epoch))[ranks[selected]]
        seeds = np.stack([np.full_like(indices, self.seed), epochs * self.num_examples + indices], axis=-1)
        return indices, seeds


def eval_host_examples(num_examples: int, global_batch_size: int, process_index: int,
                       process_count: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices [steps, b], is_padding [steps, b]) covering every example once; equal steps on every host."""
    num_steps = -(-num_examples // global_batch_size)
    b = global_batch_size // process_count
    positions = np.arange(num_steps * global_batch_size, dtype=np.int64).reshape(num_steps, global_batch_size)
    positions = positions[:, process_index * b : (process_index + 1) * b]
    is_padding = positions >= num_examples
    return np.where(is_padding, 0, positions), is_padding
