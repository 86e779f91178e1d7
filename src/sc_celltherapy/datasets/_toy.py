"""A seeded generator of product lots with known truth (synthetic data, labelled as such)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import InputError
from .._keys import KEYS
from .._markers import PLURIPOTENCY_PANEL

# Marker programmes of the populations the generator can plant (published markers, see
# PRODUCT.md); each population's markers are strongly expressed in it and nearly absent elsewhere.
POPULATIONS: dict[str, list[str]] = {
    "T cell": [
        "CD3D",
        "CD3E",
        "CD3G",
        "CD2",
        "CD5",
        "TRAC",
        "TRBC1",
        "TRBC2",
        "CD8A",
        "CD8B",
        "IL7R",
        "CD247",
        "LCK",
    ],
    "NK cell": [
        "NCAM1",
        "FCGR3A",
        "KLRD1",
        "KLRC1",
        "KLRK1",
        "NCR1",
        "NCR3",
        "NKG7",
        "GNLY",
        "PRF1",
        "GZMB",
        "KLRF1",
    ],
    "monocyte": [
        "LYZ",
        "CD14",
        "S100A8",
        "S100A9",
        "FCN1",
        "CST3",
        "CSF1R",
        "VCAN",
        "LST1",
        "AIF1",
    ],
    "B cell": ["CD79A", "CD79B", "MS4A1", "CD19", "PAX5", "BANK1"],
    "pluripotent": list(PLURIPOTENCY_PANEL),
    "endothelial": ["PECAM1", "CDH5", "VWF", "KDR", "EMCN", "TIE1"],
    "erythroid": ["HBB", "HBA1", "HBA2", "ALAS2", "GYPA"],
}
PROLIFERATION = [
    "MKI67",
    "TOP2A",
    "CENPF",
    "NUSAP1",
    "TYMS",
    "UBE2C",
    "BIRC5",
    "CDK1",
    "CCNB1",
    "MCM2",
    "PCNA",
    "TUBB",
    "HMGB2",
]
MITOCHONDRIAL = [
    "MT-ND1",
    "MT-ND2",
    "MT-CO1",
    "MT-CO2",
    "MT-ATP8",
    "MT-ATP6",
    "MT-CO3",
    "MT-ND3",
    "MT-ND4L",
    "MT-ND4",
    "MT-ND5",
    "MT-ND6",
    "MT-CYB",
]
RIBOSOMAL = [f"RPL{i}" for i in range(3, 33)] + [f"RPS{i}" for i in range(2, 28)]
DEFAULT_FRACTIONS = {"T cell": 0.9, "NK cell": 0.04, "monocyte": 0.04, "B cell": 0.02}

_MT_SHARE = 0.04  # healthy cells: ~4% of counts mitochondrial
_RIBO_SHARE = 0.15
_MARKER_SHARE = 0.08  # a population's markers together
_PROLIF_SHARE = 0.04
_DISPERSION = 0.2  # negative-binomial overdispersion of every gene


def toy_product(
    *,
    n_cells: int = 2000,
    fractions: dict[str, float] | None = None,
    doublet_rate: float = 0.05,
    low_quality_rate: float = 0.1,
    proliferating_fraction: float = 0.1,
    proliferating_population: str = "T cell",
    n_genes: int = 2000,
    seed: int = 0,
) -> AnnData:
    """Simulate a product lot whose truth is known (synthetic data, not real cells).

    Singlet, good-quality cells are drawn from the populations in ``fractions`` (negative-binomial
    counts around a population profile with its marker programme, lognormal library sizes). Then:
    heterotypic doublets (the sum of two cells of different populations) replace
    ``doublet_rate`` of the cells; low-quality barcodes replace ``low_quality_rate`` of them, half
    dying cells (an eighth of the library, 40-70% mitochondrial) and half near-empty droplets
    (100-400 counts of the ambient profile); ``proliferating_fraction`` of
    ``proliferating_population`` expresses the proliferation programme (MKI67, TOP2A, ...).

    Parameters
    ----------
    n_cells
        Barcodes in the lot.
    fractions
        Population -> fraction of the singlet good-quality cells (sums to 1). Populations:
        ``"T cell"``, ``"NK cell"``, ``"monocyte"``, ``"B cell"``, ``"pluripotent"``,
        ``"endothelial"``, ``"erythroid"``. Cell numbers are rounded, and the largest population
        takes the remainder, so the truth is exact.
    doublet_rate, low_quality_rate
        Fractions of all barcodes planted as doublets / low-quality barcodes.
    proliferating_fraction, proliferating_population
        Share of that population in cycle.
    n_genes
        Total genes (markers, mitochondrial and ribosomal genes plus background ``TOYG*`` genes).
    seed
        Seed; the same seed gives the same lot.

    Returns
    -------
    AnnData with counts in ``.X`` and the truth in ``obs``: ``true_population`` (each doublet's
    first parent), ``true_doublet``, ``true_low_quality`` (``"dying"``/``"empty"`` in
    ``true_low_quality_kind``), ``true_proliferating``; ``uns["sct_dataset"]`` says it is synthetic
    and records the arguments.

    Examples
    --------
    >>> import sc_celltherapy as sct
    >>> lot = sct.datasets.toy_product(n_cells=1000, fractions={"T cell": 0.99, "pluripotent": 0.01})
    >>> int((lot.obs["true_population"] == "pluripotent").sum())
    8
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    _check_args(
        n_cells,
        fractions,
        doublet_rate,
        low_quality_rate,
        proliferating_fraction,
        proliferating_population,
    )
    rng = np.random.default_rng(seed)
    genes = _gene_names(n_genes)
    profiles = _population_profiles(genes, rng)
    ambient = np.mean(list(profiles.values()), axis=0)

    n_doublets = int(round(doublet_rate * n_cells))
    n_low = int(round(low_quality_rate * n_cells))
    n_singlets = n_cells - n_doublets - n_low
    counts_per_pop = {p: int(round(f * n_singlets)) for p, f in fractions.items()}
    largest = max(fractions, key=fractions.get)
    counts_per_pop[largest] += n_singlets - sum(counts_per_pop.values())

    populations = np.concatenate([np.repeat(p, n) for p, n in counts_per_pop.items()])
    proliferating = np.zeros(n_singlets, dtype=bool)
    cycling_pool = np.flatnonzero(populations == proliferating_population)
    n_cycling = int(round(proliferating_fraction * cycling_pool.size))
    proliferating[rng.choice(cycling_pool, n_cycling, replace=False)] = True
    prolif_idx = np.flatnonzero(np.isin(genes, PROLIFERATION))

    def draw(pop: str, cycling: bool, library: float, mt_share: float = _MT_SHARE) -> np.ndarray:
        p = profiles[pop].copy()
        if cycling:
            p[prolif_idx] += _PROLIF_SHARE / prolif_idx.size
        p = _with_mt_share(p, genes, mt_share)
        return _nb(rng, p * library)

    def library_size() -> float:
        return float(rng.lognormal(np.log(5000), 0.4))

    rows, truth = [], []
    for pop, cyc in zip(populations, proliferating, strict=True):
        rows.append(draw(pop, cyc, library_size()))
        truth.append((pop, False, "", cyc))
    pop_names = list(counts_per_pop)
    for _ in range(n_doublets):
        a, b = _two_populations(rng, populations)
        rows.append(draw(a, False, library_size()) + draw(b, False, library_size()))
        truth.append((a, True, "", False))
    for i in range(n_low):
        pop = rng.choice(populations) if populations.size else pop_names[0]
        if i % 2 == 0:  # dying: small library, mitochondria dominate
            rows.append(draw(pop, False, library_size() / 8, mt_share=rng.uniform(0.4, 0.7)))
            truth.append((pop, False, "dying", False))
        else:  # near-empty droplet: a little ambient RNA
            rows.append(_nb(rng, _with_mt_share(ambient, genes, _MT_SHARE) * rng.uniform(100, 400)))
            truth.append((pop, False, "empty", False))

    order = rng.permutation(n_cells)
    X = sp.csr_matrix(np.vstack(rows)[order].astype(np.float32))
    obs = pd.DataFrame(
        truth,
        columns=["true_population", "true_doublet", "true_low_quality_kind", "true_proliferating"],
    ).iloc[order]
    obs["true_low_quality"] = obs["true_low_quality_kind"] != ""
    obs.index = [f"toy-{i:06d}" for i in range(n_cells)]
    obs["true_population"] = pd.Categorical(obs["true_population"])
    adata = AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))
    adata.var["feature_types"] = "Gene Expression"
    adata.uns[KEYS.DATASET] = {
        "name": "toy_product",
        "kind": "synthetic (generated by sc_celltherapy, not real cells)",
        "params": {
            "n_cells": n_cells,
            "fractions": fractions,
            "doublet_rate": doublet_rate,
            "low_quality_rate": low_quality_rate,
            "proliferating_fraction": proliferating_fraction,
            "proliferating_population": proliferating_population,
            "n_genes": n_genes,
            "seed": seed,
        },
    }
    return adata


def _check_args(n_cells, fractions, doublet_rate, low_quality_rate, prolif, prolif_pop) -> None:
    unknown = sorted(set(fractions) - set(POPULATIONS))
    if unknown:
        msg = f"Unknown populations {unknown}; known: {sorted(POPULATIONS)}."
        raise InputError(msg)
    if any(f < 0 for f in fractions.values()) or not np.isclose(sum(fractions.values()), 1):
        msg = f"fractions must be non-negative and sum to 1, got {fractions}."
        raise InputError(msg)
    for name, value in (
        ("doublet_rate", doublet_rate),
        ("low_quality_rate", low_quality_rate),
        ("proliferating_fraction", prolif),
    ):
        if not 0 <= value < 1:
            msg = f"{name} must be in [0, 1), got {value}."
            raise InputError(msg)
    if doublet_rate + low_quality_rate >= 1 or n_cells < 10:
        msg = "Need n_cells >= 10 and doublet_rate + low_quality_rate < 1."
        raise InputError(msg)
    if prolif > 0 and prolif_pop not in fractions:
        msg = f"proliferating_population {prolif_pop!r} is not among fractions {list(fractions)}."
        raise InputError(msg)


def _gene_names(n_genes: int) -> np.ndarray:
    named = [g for genes in POPULATIONS.values() for g in genes] + PROLIFERATION + MITOCHONDRIAL
    named += RIBOSOMAL
    if n_genes < len(named) + 100:
        msg = f"n_genes must be at least {len(named) + 100}, got {n_genes}."
        raise InputError(msg)
    background = [f"TOYG{i:05d}" for i in range(n_genes - len(named))]
    return np.array(named + background)


def _population_profiles(genes: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Expression proportions per population (mitochondrial share set later, per cell)."""
    background = np.char.startswith(genes.astype(str), "TOYG")
    ribo = np.isin(genes, RIBOSOMAL)
    base = np.zeros(genes.size)
    base[background] = rng.gamma(0.4, 1.0, background.sum())
    base[ribo] = rng.gamma(4.0, 1.0, ribo.sum())
    profiles = {}
    for pop, markers in POPULATIONS.items():
        p = base.copy()
        # each population shifts 15% of the background genes: real cell types differ in hundreds
        # of genes, not only in their markers
        shifted = rng.choice(
            np.flatnonzero(background), int(0.15 * background.sum()), replace=False
        )
        p[shifted] *= np.exp(rng.normal(0, 1.0, shifted.size))
        p[background] *= (1 - _RIBO_SHARE - _MARKER_SHARE) / p[background].sum()
        p[ribo] *= _RIBO_SHARE / p[ribo].sum()
        marker_idx = np.flatnonzero(np.isin(genes, markers))
        p[marker_idx] = _MARKER_SHARE * rng.dirichlet(np.full(marker_idx.size, 3.0))
        # other populations' markers: a trace (ambient / leaky expression)
        other = np.flatnonzero(~background & ~ribo & ~np.isin(genes, markers))
        p[other] = 1e-6
        profiles[pop] = p / p.sum()
    return profiles


def _with_mt_share(p: np.ndarray, genes: np.ndarray, share: float) -> np.ndarray:
    mt = np.char.startswith(genes.astype(str), "MT-")
    out = p.copy()
    out[~mt] *= (1 - share) / out[~mt].sum()
    out[mt] = share / mt.sum()
    return out


def _nb(rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
    """Negative-binomial counts as a gamma-Poisson mixture."""
    return rng.poisson(mean * rng.gamma(1 / _DISPERSION, _DISPERSION, mean.size))


def _two_populations(rng: np.random.Generator, populations: np.ndarray) -> tuple[str, str]:
    """Parents of a heterotypic doublet: first by abundance, second from another population."""
    a = rng.choice(populations)
    others = populations[populations != a]
    if others.size == 0:  # a one-population lot: the doublet can only be homotypic
        return a, a
    return a, rng.choice(others)
