"""Preprocessing and quality control of a lot."""

from ._doublets import doublets
from ._qc import QCWarning, filter_cells, flag_low_quality, qc_metrics

__all__ = ["qc_metrics", "flag_low_quality", "doublets", "filter_cells", "QCWarning"]
