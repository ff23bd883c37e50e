"""The book's side of ``bkd_core``: what shows results and never trains (needs ``pip install .[book]``).

- :mod:`~bkd_core.book.chapter`: the chapters' plumbing (Colab set-up, data and configuration, the settings
  as prose, tables, glue and conclusions); its names are re-exported here, so a chapter writes
  ``from bkd_core import book`` and ``book.glue(...)``.
- :mod:`~bkd_core.book.analysis`: what a chapter measures on a run (arrays in, numbers and DataFrames out).
- :mod:`~bkd_core.book.plots`: the chapters' figures.
- :mod:`~bkd_core.book.cache`: the run cache, so chapters with the same parameters share their runs.
- :mod:`~bkd_core.book.results`: the tables of a reproduction batch (:mod:`bkd_core.batch`, which runs it,
  reads and writes its folder, and checks its runs).
- :mod:`~bkd_core.book.published`: the paper's CIFAR-N numbers with their protocol.
- :mod:`~bkd_core.book.cnn`: the `cnn` profile's committed evidence (its diagnostic runs, and its batch as far as
  it has run).
- :mod:`~bkd_core.book.ablations`: BKD's last epoch against early-stopped cross-entropy and BKD stopped at its
  switch, over a batch's seeds.

The training code (method, trainer, models, data, features, configuration, run folders, detectors) lives at
the top level of ``bkd_core`` and imports nothing from here.
"""

from .chapter import *  # noqa: F403  (the chapters' helpers, as book.glue, book.table, ...)
from .chapter import __all__  # noqa: F401
