import os

import torch

# The suite's models are tiny: one intra-op thread is as fast as two here and does not thrash
# when other jobs share the two cores. BKD_TEST_THREADS runs the suite with another thread count
# (the suite is checked with 1 and 2: float reductions split differently, and no test may depend on it).
torch.set_num_threads(int(os.environ.get("BKD_TEST_THREADS", "1")))
