"""sc_celltherapy: identity and purity of cell-therapy product lots from single-cell RNA-seq.

Scanpy's grammar (``sct.pp``, ``sct.tl``, ``sct.pl``) on AnnData, with scvi-tools underneath for
reference mapping. Importing the package is light: torch and scvi-tools load only when a
function needs them.
"""

from . import atlas, datasets, io, pl, pp, release, tl, validation
from ._checks import InputError
from ._keys import KEYS
from ._settings import settings
from ._version import __version__

__all__ = [
    "pp",
    "tl",
    "pl",
    "io",
    "datasets",
    "atlas",
    "release",
    "validation",
    "settings",
    "InputError",
    "KEYS",
    "__version__",
]
