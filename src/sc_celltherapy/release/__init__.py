"""Release of a lot: the specification it is judged against."""

from ._spec import IMPURITY_CLASSES, Spec, SpecError

__all__ = ["Spec", "SpecError", "IMPURITY_CLASSES"]
