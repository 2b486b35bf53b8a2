"""Peak CPU memory of one run, not of the process's whole life.

Why not ``resource.getrusage(...).ru_maxrss``: it is the process's lifetime peak, so the second
run of a command (``--models A B``) reported at least the first run's peak. Why not
``tracemalloc``: it sees Python and numpy allocations but not torch's CPU tensors. So a
background thread samples the resident set size (``psutil``) while the run lasts and keeps the
largest value. It can miss a spike shorter than the sampling interval; the RSS includes what the
process still holds from earlier work (imported modules, freed memory the allocator kept), but
never an earlier run's peak. CUDA runs use ``torch.cuda.reset_peak_memory_stats`` instead (exact).
"""

import threading

import psutil

# Seconds between two RSS samples: short against an epoch, cheap (one /proc read).
SAMPLE_INTERVAL_S = 0.05
BYTES_PER_MB = 2**20


class PeakRSS:
    """``with PeakRSS() as peak: ...`` then ``peak.mb``: the largest RSS sampled in the block, in MB."""

    def __init__(self, interval_s=SAMPLE_INTERVAL_S):
        self.interval_s = interval_s
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = None
        self.peak_bytes = 0

    def _sample(self):
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def mb(self):
        return self.peak_bytes / BYTES_PER_MB
