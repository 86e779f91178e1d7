"""Marker genes the whole package agrees on, below every layer that uses them."""

import re

# Genes that measure how well a cell was captured, not what it is: mitochondrial and ribosomal
# (human and mouse symbols). The expression excess leaves them out; cluster plots hide them.
QUALITY_GENES = re.compile(r"^(MT-|MTRNR|RP[SL]\d|RP[SL]P|Mt-|mt-|Rp[sl]\d)")

# Residual undifferentiated cells (PRODUCT.md): the panel release labs use for hPSC products.
# The detector always uses this panel, whatever a product profile lists, so that the residual
# pluripotent fraction of a lot never depends on the profile chosen.
PLURIPOTENCY_PANEL = (
    "POU5F1",
    "NANOG",
    "LIN28A",
    "DPPA4",
    "TDGF1",
    "ZFP42",
    "L1TD1",
    "DNMT3B",
    "PRDM14",
    "ESRG",
)
