"""The names under which sc_celltherapy writes into an AnnData, in one place (as scvi-tools'
``REGISTRY_KEYS``): a step that writes a key and the steps, reports and plots that read it use
the same constant, so a rename cannot leave a reader behind.

Per-cell columns of the mapping are ``f"{KEYS.REF}_label"``, ``_prob``, ``_unassigned`` ... (the
``key_added`` of :func:`sc_celltherapy.tl.map_to_reference`, ``KEYS.REF`` by default)."""

from __future__ import annotations

from typing import NamedTuple


class _Keys(NamedTuple):
    INPUT: str = "sct_input"  # uns: what was read (file, format, sha256, counts layer)
    QC_METRICS: str = "sct_qc_metrics"  # uns: how the QC metrics were computed
    LOW_QUALITY: str = "sct_low_quality"  # obs: flagged low quality; uns: thresholds
    DOUBLET: str = "sct_doublet"  # obs: flagged doublet; uns: scrublet settings per sample
    QC: str = "sct_qc"  # uns: cells before and after QC, removed per criterion
    LOGNORM: str = "sct_lognorm"  # layers: log-normalised counts
    HVG: str = "sct_hvg"  # var: highly variable genes of the clustering
    CLUSTER: str = "sct_cluster"  # obs: Leiden cluster; uns: settings, markers
    REF: str = "sct_ref"  # uns (and obs prefix): mapping onto a reference bundle
    IDENTITY: str = "sct_identity"  # obs: identity score; uns: method, rules, identities
    IDENTITY_CLASS: str = "sct_identity_class"  # obs: each cell's identity class
    SEX: str = "sct_sex"  # obs: each cell's sex evidence; uns: the lot's call (chain of identity)
    PURITY: str = "sct_purity"  # uns: the purity table against a spec
    COMPARE: str = "sct_compare"  # uns: a lot against qualified lots
    RELEASE: str = "sct_release"  # uns: the release that wrote this lot.h5ad
    ATLAS_BUILD: str = "sct_atlas_build"  # uns: how a bundle's reference was prepared
    DATASET: str = "sct_dataset"  # uns: what an embedded or generated dataset is


KEYS = _Keys()
