"""Embedded data: a real labelled PBMC reference, a demo lot generated from it with planted
contaminants, and a seeded toy lot with known truth."""

from ._pbmc import DEMO_LOT_COMPOSITION, pbmc_demo_lot, pbmc_reference
from ._toy import POPULATIONS, toy_product

__all__ = ["pbmc_reference", "pbmc_demo_lot", "DEMO_LOT_COMPOSITION", "toy_product", "POPULATIONS"]
