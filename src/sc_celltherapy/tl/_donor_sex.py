"""Chain of identity from the transcriptome: the donor's sex, cell by cell and for the lot.

An autologous product must come from its patient. The counts carry part of that evidence for
free: a female cell expresses XIST, a male cell the chrY genes (RPS4Y1, DDX3Y, UTY, KDM5D,
EIF1AY, ...). Each cell is ``female`` (XIST detected, no chrY gene), ``male`` (a chrY gene
detected, no XIST), ``both`` (a doublet of two donors, or ambient RNA) or ``none`` (neither
detected: shallow cells, and many T cells, whose XIST is low). The lot's male share among the
informative cells (female or male) has a Wilson interval; the lot is called by its majority, and
a *possible mix* of two donors when the minority sex is above :data:`MIX_LIMIT` with 95%
confidence.

Measured on the real CAR-T data (../shared/data): in the five dev patients, the unsorted blood
and marrow samples and the unsorted product, not one cell of 8,000 showed the other sex's
genes (male patients: 66-96% of cells chrY+, 0 XIST+; female: 61-64% XIST+, 0 chrY+).

What this does not catch: a lot swapped with another donor of the same sex, and a second donor
below about 1% of the informative cells. Genotype-based demultiplexing of the reads (e.g.
souporcell, vireo) does; it is outside this package.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _stats
from .._checks import gene_columns, get_matrix
from .._keys import KEYS
from .._utils import uns_safe

FEMALE_GENES = ("XIST",)
MALE_GENES = ("RPS4Y1", "DDX3Y", "UTY", "KDM5D", "EIF1AY", "ZFY", "USP9Y", "NLGN4Y", "TXLNGY")
# Fewer informative cells than this leave the lot's sex not assessable: the interval of the male
# share of 20 cells that are all male is still [84%, 100%].
MIN_INFORMATIVE_CELLS = 20
# A minority sex whose 95% lower bound is above this is a possible mix of two donors. No cell of
# the other sex was seen among ~8,000 informative real cells (ambient RNA included), so 1% leaves
# room for ambient RNA without missing a real second donor much above it.
MIX_LIMIT = 0.01
LEVEL = 0.95
CATEGORIES = ["female", "male", "both", "none"]


def donor_sex(
    adata: AnnData,
    *,
    layer: str | None = None,
    cells: np.ndarray | None = None,
    key_added: str = KEYS.SEX,
) -> dict[str, Any]:
    """Sex evidence of each cell and the lot's call, for the chain of identity.

    Parameters
    ----------
    adata
        Lot with raw counts in ``.X`` or ``layer``.
    layer
        Layer with raw counts; ``None`` uses ``.X``.
    cells
        Boolean mask of the cells the lot's call counts (e.g. those passing QC); ``None``: all.
    key_added
        ``adata.obs[key_added]``: each cell's evidence (``female``, ``male``, ``both``,
        ``none``); ``adata.uns[key_added]``: the lot's call.

    Returns
    -------
    The lot's record: ``call`` (``female``, ``male``, ``mixed`` or ``not assessable``), the
    cells of each evidence, the male share among informative cells with its 95% interval, the
    minority share with its interval, the genes found and the rule.
    """
    female_found = gene_columns(adata, FEMALE_GENES)
    male_found = gene_columns(adata, MALE_GENES)
    female_cols = list(female_found.values())
    counts = get_matrix(adata, layer)
    female = _detected(counts, female_cols)
    male = _detected(counts, list(male_found.values()))
    evidence = np.select(
        [female & ~male, male & ~female, female & male], ["female", "male", "both"], "none"
    )
    adata.obs[key_added] = pd.Categorical(evidence, categories=CATEGORIES)
    mask = np.ones(adata.n_obs, dtype=bool) if cells is None else np.asarray(cells, dtype=bool)
    n = {c: int(((evidence == c) & mask).sum()) for c in CATEGORIES}
    record: dict[str, Any] = {
        "n_cells": int(mask.sum()),
        "n": n,
        "genes_found": {"female": list(female_found), "male": list(male_found)},
        "rule": (
            "a cell is female with XIST detected and no chrY gene, male with a chrY gene "
            f"({', '.join(MALE_GENES)}) detected and no XIST; the lot is its informative cells' "
            f"majority, a possible mix when the minority's 95% lower bound exceeds {MIX_LIMIT:.0%}"
        ),
        "mix_limit": MIX_LIMIT,
    }
    informative = n["female"] + n["male"]
    if not female_cols or not male_found:
        missing = "XIST" if not female_cols else "every chrY gene"
        record |= {"call": "not assessable", "reason": f"the matrix lacks {missing}"}
    elif informative < MIN_INFORMATIVE_CELLS:
        record |= {
            "call": "not assessable",
            "reason": f"only {informative} cells carry sex evidence (at least "
            f"{MIN_INFORMATIVE_CELLS} are needed)",
        }
    else:
        lo, hi = _stats.fraction_interval(n["male"], informative, LEVEL)
        minority = min(n["male"], n["female"])
        m_lo, m_hi = _stats.fraction_interval(minority, informative, LEVEL)
        majority = "male" if n["male"] > n["female"] else "female"
        record |= {
            "male_fraction": n["male"] / informative,
            "ci_low": lo,
            "ci_high": hi,
            "minority_fraction": minority / informative,
            "minority_ci_low": m_lo,
            "minority_ci_high": m_hi,
            "call": "mixed" if m_lo > MIX_LIMIT else majority,
            "majority": majority,
        }
    adata.uns[key_added] = uns_safe(record)
    return record


def _detected(counts, cols: list[int]) -> np.ndarray:
    if not cols:
        return np.zeros(counts.shape[0], dtype=bool)
    return np.asarray((counts[:, cols] > 0).sum(axis=1)).ravel() > 0


def judge_donor(record: dict, *, expected_sex: str | None, single_donor: bool | None) -> dict:
    """The chain-of-identity verdict of a lot's record against what the spec states.

    Parameters
    ----------
    record
        :func:`donor_sex`'s lot record.
    expected_sex
        The donor's recorded sex (``"female"``, ``"male"``), or ``None``: not judged.
    single_donor
        ``True``: cells of two sexes above the mix limit fail the lot; ``None``: not judged.

    Returns
    -------
    ``record`` with ``expected_sex``, ``single_donor``, ``verdict`` (``None`` when the spec
    states neither) and ``reason``.
    """
    out = {**record, "expected_sex": expected_sex, "single_donor": single_donor}
    if expected_sex is None and not single_donor:
        return out | {"verdict": None}
    call = record["call"]
    if call == "not assessable":
        return out | {
            "verdict": _stats.INCONCLUSIVE,
            "reason": f"not assessable: {record['reason']}; the spec's chain-of-identity "
            "criterion cannot pass without sex evidence",
        }
    if single_donor and call == "mixed":
        return out | {
            "verdict": _stats.FAIL,
            "reason": f"possible mix of two donors: {record['n']['male']} male and "
            f"{record['n']['female']} female cells (minority {record['minority_fraction']:.1%}, "
            f"95% lower bound {record['minority_ci_low']:.1%} > {MIX_LIMIT:.0%})",
        }
    if expected_sex is not None and record["majority"] != expected_sex:
        return out | {
            "verdict": _stats.FAIL,
            "reason": f"the lot's cells are {record['majority']} ({record['n']['male']} male, "
            f"{record['n']['female']} female), the record says {expected_sex}: a swapped or "
            "mislabelled lot",
        }
    return out | {"verdict": _stats.PASS, "reason": f"{record['majority']}, as recorded"}
