"""bkd_core: Blind Knowledge Distillation (Kaiser et al., arXiv 2211.11355) on CIFAR-N."""

import os

# OpenMP threads that finish early sleep instead of spinning (unless the user chose otherwise).
# Must be set before torch loads its OpenMP runtime, i.e. before the first `import torch`. Measured
# in benchmarks/README.md: neutral on an idle machine, 1.5x to 5x faster epochs when other processes
# share the cores (spinning threads steal the CPU the busy ones need).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
