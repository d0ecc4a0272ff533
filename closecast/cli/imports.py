"""Heavy imports without the garbage collector: a command spends most of its start importing.

Importing torch, MLflow, Prefect and pandas builds about a million objects,
and the cyclic garbage collector walks the growing heap again and again
while they are built: about a quarter of the import time, none of it
finding garbage worth the walk. Inside `heavy_imports` the collector is off;
on leaving, what the imports built is frozen (`gc.freeze`: never walked
again, as it lives as long as the process) and the collector is back on for
the work that follows.
"""

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def heavy_imports() -> Iterator[None]:
    """The block runs with the garbage collector off; what it built is frozen after it.

    Nested blocks leave the collector to the outermost one, and a collector
    already off (someone else's choice) stays off.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
