"""bkd_core: Blind Knowledge Distillation (Kaiser et al., arXiv 2211.11355) on CIFAR-N."""

__version__ = "0.1.0"
