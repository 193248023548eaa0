"""SAE-ception: turn a sparse autoencoder's features into a training signal, in cycles."""

import os

# OpenMP threads that finish a parallel region spin before they sleep (GNU libgomp, torch's CPU runtime: 300,000
# spins by default). Two runs side by side on one machine then spend their cores spinning against each other:
# on 2 cores two default digits runs took 12x as long as one (benchmarks/bench_parallel_runs.py). A short spin
# keeps one run as fast and makes runs side by side share the cores. It must be set before torch loads OpenMP,
# so it is set here, on import, unless the user chose a wait policy or spin count themselves.
if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "1000"

__version__ = "0.1.0"
