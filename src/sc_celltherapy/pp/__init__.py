"""Preprocessing and quality control of a lot."""

from ._doublets import doublets
from ._qc import QCWarning, flag_low_quality, qc_metrics, remove_flagged

__all__ = ["qc_metrics", "flag_low_quality", "doublets", "remove_flagged", "QCWarning"]
