"""Assay validation (ICH Q2(R2)): in-silico spike-in of real cells with known truth, and the
validation plan a laboratory writes before it releases lots of a product."""

from ._dossier import check_dossier_dir, result_schema, write_dossier
from ._plan import PlanError, ValidationPlan, load_plan, plan_schema
from ._run import ValidationResult, run
from ._spike_in import SPIKE_KEY, SpikeInResult, mix, select_by_markers, spike_in

__all__ = [
    "SPIKE_KEY",
    "SpikeInResult",
    "mix",
    "select_by_markers",
    "spike_in",
    "ValidationPlan",
    "PlanError",
    "load_plan",
    "plan_schema",
    "run",
    "ValidationResult",
    "write_dossier",
    "result_schema",
    "check_dossier_dir",
]
