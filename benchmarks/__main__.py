"""``python -m benchmarks``: the performance suite (benchmarks/run.py)."""

import sys

from benchmarks.run import main

sys.exit(main())
