"""Cross-checks of a product profile beyond its JSON Schema: its atlas exists and holds its
reference labels (or, marker-only, there are none), identity names are unique, a label counts
towards one identity, a gene is not both positive and negative, the example spec names known
identities; and the profile with its optional fields filled."""

from __future__ import annotations

from collections.abc import Mapping

from ._manifests import _fail, _names, atlas_fine_labels, load_manifest


def check_profile(p: dict, source: str, atlas: Mapping | None) -> None:
    if p.get("atlas") is None:
        check_marker_only(p, source)
        atlas = None
    elif atlas is None:
        available = _names("atlas")
        if p["atlas"] not in available:
            _fail(
                source,
                "$.atlas",
                f"no atlas manifest {p['atlas']!r}; available: {available}. Add "
                f"reference_atlases/atlases/{p['atlas']}.yaml, name an existing atlas, or leave "
                "atlas out for a marker-only profile.",
            )
        atlas = load_manifest(p["atlas"])
    elif atlas["name"] != p["atlas"]:
        _fail(source, "$.atlas", f"{p['atlas']!r} but the atlas given is {atlas['name']!r}.")
    if atlas is not None and not p["target"].get("reference_labels"):
        _fail(
            source,
            "$.target.reference_labels",
            f"the profile names atlas {p['atlas']!r}, so its target needs at least one of its "
            "fine labels (or leave atlas out for a marker-only profile).",
        )
    for i, name in enumerate(p.get("related_atlases", [])):
        if name not in _names("atlas"):
            _fail(source, f"$.related_atlases[{i}]", f"no atlas manifest {name!r}.")

    identities = [("$.target", p["target"])]
    identities += [(f"$.off_target[{i}]", x) for i, x in enumerate(p["off_target"])]
    identities += [(f"$.forbidden[{i}]", x) for i, x in enumerate(p["forbidden"])]
    names = [x["name"] for _, x in identities]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        _fail(source, "$", f"identity names must be unique, repeated: {dup}.")

    known = atlas_fine_labels(atlas) if atlas is not None else None
    owner: dict[str, str] = {}
    for where, ident in identities:
        both = sorted(set(ident["markers"]["positive"]) & set(ident["markers"]["negative"]))
        if both:
            _fail(source, f"{where}.markers", f"genes {both} are both positive and negative.")
        for j, label in enumerate(ident.get("reference_labels", [])):
            if label in owner:
                _fail(
                    source,
                    f"{where}.reference_labels[{j}]",
                    f"label {label!r} already belongs to identity {owner[label]!r}; a label "
                    "counts towards one identity only.",
                )
            owner[label] = ident["name"]
            if known is not None and label not in known:
                _fail(
                    source,
                    f"{where}.reference_labels[{j}]",
                    f"{label!r} is not a fine label of atlas {atlas['name']!r} "
                    f"(column {atlas['label_keys']['fine']!r}); its labels are {known}.",
                )

    gate = p["target"].get("lineage_gate")
    if gate:
        off_target = {x["name"] for x in p["off_target"] if x["class"] == "off_target"}
        for i, name in enumerate(gate["rescues"]):
            if name not in off_target:
                _fail(
                    source,
                    f"$.target.lineage_gate.rescues[{i}]",
                    f"{name!r} is no off-target identity of this profile (off-target: "
                    f"{sorted(off_target)}); a gate may only override off-target calls, never a "
                    "forbidden or residual pluripotent one.",
                )
        clash = sorted(set(gate["genes"]) & set(p["target"]["markers"].get("negative", [])))
        if clash:
            _fail(
                source,
                "$.target.lineage_gate.genes",
                f"genes {clash} are negative markers of the target; a gate gene is evidence for it.",
            )

    spec = p["example_spec"]
    limits = spec["max_impurity"]
    if "residual_pluripotent" in limits and not any(
        x["class"] == "residual_pluripotent" for x in p["forbidden"] + p["off_target"]
    ):
        _fail(
            source,
            "$.example_spec.max_impurity.residual_pluripotent",
            "a limit is set but no identity has class residual_pluripotent.",
        )
    impurity_names = {x["name"] for x in p["off_target"] + p["forbidden"]}
    for i, item in enumerate(spec.get("max_identity_fraction", [])):
        if item["identity"] not in impurity_names:
            _fail(
                source,
                f"$.example_spec.max_identity_fraction[{i}].identity",
                f"{item['identity']!r} is no off-target or forbidden identity of this profile; "
                f"they are {sorted(impurity_names)}.",
            )


def check_marker_only(p: dict, source: str) -> None:
    """A profile without an atlas has nothing to take reference labels from."""
    identities = [("$.target", p["target"])]
    identities += [(f"$.off_target[{i}]", x) for i, x in enumerate(p["off_target"])]
    identities += [(f"$.forbidden[{i}]", x) for i, x in enumerate(p["forbidden"])]
    for where, ident in identities:
        if ident.get("reference_labels"):
            _fail(
                source,
                f"{where}.reference_labels",
                "the profile names no atlas, so its identities cannot have reference labels. "
                "Name the atlas they come from (atlas: <manifest>) or remove the labels.",
            )
    if p.get("related_atlases"):
        _fail(source, "$.related_atlases", "a marker-only profile (no atlas) relates to no atlas.")


def normalise_profile(p: Mapping) -> dict:
    """A validated profile with its optional fields filled: ``atlas`` (``None`` when
    marker-only) and every identity's ``reference_labels`` (``[]`` when left out)."""
    out = dict(p)
    out["atlas"] = p.get("atlas")
    out["target"] = {"reference_labels": [], **p["target"]}
    for key in ("off_target", "forbidden"):
        out[key] = [{"reference_labels": [], **x} for x in p[key]]
    return out
