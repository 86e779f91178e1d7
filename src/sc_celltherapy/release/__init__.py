"""Release of a lot: the spec it is judged against, the run that judges it, its report and audit."""

from .._signing import SigningError, generate_key
from .._spec import IMPURITY_CLASSES, Spec, SpecError
from ._audit import AuditError, AuditLog, verify_audit
from ._multiqc import multiqc_content, write_multiqc_content
from ._preflight import ReleaseExistsError, check_out_dir
from ._results import spec_digest, validate_results
from ._run import Release, compare_results, run
from ._score import assess, score
from ._summary import summarize

__all__ = [
    "Spec",
    "SpecError",
    "IMPURITY_CLASSES",
    "run",
    "score",
    "assess",
    "Release",
    "ReleaseExistsError",
    "compare_results",
    "AuditLog",
    "AuditError",
    "verify_audit",
    "summarize",
    "multiqc_content",
    "write_multiqc_content",
    "check_out_dir",
    "validate_results",
    "spec_digest",
    "generate_key",
    "SigningError",
]
