"""Embedded data: a real labelled PBMC reference and a seeded toy lot with known truth."""

from ._pbmc import pbmc_reference
from ._toy import POPULATIONS, toy_product

__all__ = ["pbmc_reference", "toy_product", "POPULATIONS"]
