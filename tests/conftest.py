import torch

# The suite's models are tiny: one intra-op thread is as fast as two here and does not thrash
# when other jobs share the two cores.
torch.set_num_threads(1)
