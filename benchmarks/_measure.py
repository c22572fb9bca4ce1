"""Wall time, CPU time and peak resident memory of a block of code (RSS sampled every 20 ms).

CPU time (all threads of the process) is the figure to compare on a machine shared with other
jobs, where wall time depends on the load.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psutil


@contextmanager
def measure(results: dict, name: str):
    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    done = threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        done.set()
        thread.join()
        peak[0] = max(peak[0], proc.memory_info().rss)
        r = results[name] = {
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
            "peak_rss_gb": peak[0] / 1e9,
        }
        print(
            f"{name:>14}: {r['seconds']:7.1f} s   CPU {r['cpu_seconds']:7.1f} s   "
            f"peak RSS {r['peak_rss_gb']:.2f} GB",
            flush=True,
        )
