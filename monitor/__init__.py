"""splice-monitor core: SpLiCE decomposition, streaming concept statistics, drift tests, metrics, history.

This package never imports Ray; everything here runs and is tested in one process. The distributed shell lives
in the sibling package ``workers``.
"""

__version__ = "0.1.0"
