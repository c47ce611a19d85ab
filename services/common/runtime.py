"""The interpreter's settings for a server process (broker and store): the cyclic garbage
collector's thresholds and the GIL's switch interval.

CPython collects its youngest generation every 700 new container objects and an older one every
10 of those. A request through the broker makes a few dozen such objects (futures, frames,
handles, dicts) that almost all die young by reference counting, so at 10,000 requests/s the
defaults run hundreds of collections a second, each walking whatever is in flight, and promote
the survivors to the old generations, which the next older collections walk again. Measured with
benchmarks/bench_kv.py on 2 cores (3 stores, RF 2), thresholds (20000, 50, 100) against the
defaults, in the same script: routed GET 1.2-1.6x, routed SET 1.1-1.2x, mset of 100 keys 1.3x.
Memory stays bounded: a collection still runs every YOUNG new objects; only garbage in cycles
waits a little longer.

The switch interval is how long a thread that wants the GIL waits for the running one to give
it up. The event loop's thread holds it while it works; a helper thread (the broker's state
write, its lease renewal) needs it back after each of its system calls. At CPython's 5 ms, a
state write of about 1 ms took 150-190 ms next to a busy loop (and a primary switch waits for
one); at 1 ms, 23 ms. The loop itself pays nothing for it while no other thread wants the GIL.
"""

from __future__ import annotations

import gc
import sys

YOUNG = 20_000  # new container objects between collections of the youngest generation
MIDDLE = 50  # youngest collections per collection of the middle one
OLD = 100  # middle collections per full collection (CPython also waits for 25% new long-lived objects)
SWITCH_INTERVAL = 0.001  # seconds a thread waits for the GIL before the running one is asked to give it up


def tune() -> None:
    """Set them for this process (call once, before serving)."""
    gc.set_threshold(YOUNG, MIDDLE, OLD)
    sys.setswitchinterval(SWITCH_INTERVAL)
