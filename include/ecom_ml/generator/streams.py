"""Independent random streams named by purpose and key, the only source of randomness in the generator.

Every draw comes from ``stream(seed, purpose, key)``: a day's orders from ("orders", day), its
faults from ("fault:null_customer", day), and so on. That makes each day's plan a pure function of
(seed, world, day) - a later run can re-derive a neighbour day cheaply and get exactly the same
orders - and it keeps purposes from disturbing one another: injecting a fault or lengthening the
range never shifts the draws of anything else.
"""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, purpose: str, key: int = 0) -> np.random.Generator:
    """A generator seeded from (seed, purpose, key); ``purpose`` is hashed stably (not with ``hash``)."""
    tag = zlib.crc32(purpose.encode("utf-8"))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, tag, key])))
