"""Leaving a worker process without the native libraries' static destructors.

pyarrow's IO and CPU thread pools (and TensorFlow's) are C++ ``std::thread`` objects; when the
interpreter's final teardown destroys one that is still joinable, libstdc++ calls
``std::terminate`` and the process dies with SIGABRT ("terminate called without an active
exception", apache/arrow#34314) *after* all its work is done. For a trainer that would turn a
finished, written model into a failed Airflow task. ``leave`` does what a normal exit does that
matters to us — Python's ``atexit`` handlers (MLflow, logging), a garbage collection while the
libraries are still alive, flushed standard streams — and then ends the process with ``os._exit``,
which skips the C++ static destructors.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import sys
from typing import NoReturn


def leave(code: int) -> NoReturn:
    """End this process with ``code`` after the Python-level exit work, skipping native teardown."""
    try:
        gc.collect()
        atexit._run_exitfuncs()  # noqa: SLF001 - the documented handlers, run once, as exit would
        logging.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or broken pipe: nothing left to say
                pass
        os._exit(code)
