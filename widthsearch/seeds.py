"""Derived seeds: one run seed, many independent, reproducible random streams.

Every random stream of a run (a training step's widths, the batch order, the assignments an
evaluator tries for a config) is seeded from the run seed and a few integer keys, so the
stream is the same on every rank, after a resume, and whatever else ran before it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np

SEED_STEP, SEED_SHUFFLE, SEED_RECAL, SEED_EVAL = 0, 1, 2, 3
"""Purposes (the first key after the seed)."""


def derive_seed(seed: int, *keys: int) -> int:
    """A well-mixed 63-bit seed from (seed, keys...), e.g. (run seed, purpose, step)."""
    state = np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(2)
    return (int(state[0]) << 31 ^ int(state[1])) & (2**63 - 1)


def mapping_key(mapping: Mapping[str, int]) -> int:
    """A stable 63-bit integer of a {name: int} mapping (Python's hash() is salted per
    process, so it cannot seed anything that must agree across processes)."""
    text = json.dumps(sorted((str(k), int(v)) for k, v in mapping.items()))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1
