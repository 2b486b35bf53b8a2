#!/usr/bin/env python
"""Train and evaluate models under the mbrec protocol, e.g.

    python run_benchmark.py --model SASRec --dataset retailrocket
    python run_benchmark.py --models SASRec SASRec_B --datasets synthetic --seeds 2024 2025 epochs=20

See ``python run_benchmark.py --help`` and README.md.
"""

import sys

from mbrec.cli import main

if __name__ == "__main__":
    sys.exit(main())
