"""Atlas manifests and product profiles: every shipped file validates, broken ones are refused
with a message naming the field, profiles agree with their atlases, and the wheel ships them."""

from __future__ import annotations

import copy
import shutil
import tomllib
from pathlib import Path

import pytest

import sc_celltherapy as sct
from sc_celltherapy.atlas import ManifestError
from sc_celltherapy.atlas import _manifests as mf
from sc_celltherapy.atlas._recipe import prepare_obs

REPO_ROOT = Path(__file__).resolve().parents[2]
ATLASES = {
    "pbmc_demo",
    "lamanno2016_human_midbrain",
    "conde2022_immune",
    "tabula_sapiens_fat",
    "macparland2018_liver",
}
PROFILES = {"da_progenitor", "msc", "ipsc_nk_t_car", "hepatocyte_like", "car_t_demo"}
PSC_DERIVED = {"da_progenitor", "msc", "ipsc_nk_t_car", "hepatocyte_like"}
PLURIPOTENCY = {"POU5F1", "NANOG", "LIN28A"}
SHIPPED = sorted((mf.manifests_dir() / "atlases").glob("*.yaml")) + sorted(
    (mf.manifests_dir() / "profiles").glob("*.yaml")
)


def _identities(profile: dict) -> list[dict]:
    return [profile["target"], *profile["off_target"], *profile["forbidden"]]


# ---- what ships -----------------------------------------------------------------------------


def test_the_expected_files_ship():
    listed = sct.atlas.list_manifests()
    assert set(listed.loc[listed["kind"] == "atlas", "name"]) == ATLASES
    assert set(listed.loc[listed["kind"] == "profile", "name"]) == PROFILES
    assert list(listed.columns) == ["name", "kind", "version", "species", "path"]
    assert set(listed["species"]) == {"human"}  # a profile inherits its atlas's species
    assert all(Path(p).is_file() for p in listed["path"])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_yaml_validates(path):
    data = sct.atlas.validate_manifest(path)
    assert data["name"] == path.stem
    assert data["schema_version"] == 1
    assert isinstance(data["version"], str) and data["version"]


def test_load_by_name_returns_validated_dicts():
    atlas = sct.atlas.load_manifest("pbmc_demo")
    assert atlas["source"] == "embedded" and atlas["build"]["reader"] == "embedded"
    profile = sct.atlas.load_profile("car_t_demo")
    assert profile["atlas"] == "pbmc_demo"
    assert profile["transgene_features"] == [
        {
            "name": "CAT_scFv",
            "description": profile["transgene_features"][0]["description"],
            "fraction_is_lower_bound": True,
        }
    ]
    with pytest.raises(ManifestError, match="No atlas manifest 'nope'.*pbmc_demo"):
        sct.atlas.load_manifest("nope")
    with pytest.raises(ManifestError, match="No profile manifest 'pbmc_demo'"):
        sct.atlas.load_profile("pbmc_demo")


def test_public_atlases_name_real_sources():
    for name in ATLASES - {"pbmc_demo"}:
        m = sct.atlas.load_manifest(name)
        assert m["citation"]["doi"].startswith("10.")
        assert m["licence"] and m["homepage"].startswith("https://")
        for src in m["source"]:
            assert src["url"].startswith("https://")
            # no hash was invented: unknown hashes are null and trusted on first use
            if src["sha256"] is None:
                assert src["sha256_policy"] == "trust_on_first_use"
            assert src["landing_page"].startswith("https://")


def test_pbmc_demo_known_labels_are_the_embedded_data_labels():
    atlas = sct.atlas.load_manifest("pbmc_demo")
    ref = sct.datasets.pbmc_reference()
    labels = set(ref.obs["cell_type"].astype(str))
    assert set(atlas["label_keys"]["known_fine_labels"]) == labels
    assert mf.atlas_fine_labels(atlas) == atlas["label_keys"]["known_fine_labels"]
    rows, obs = prepare_obs(ref.obs, atlas)
    assert rows.size == 700 and obs["cell_lineage"].notna().all()
    t_labels = set(atlas["build"]["derive_labels"][0]["groups"][0]["members"])
    assert (obs["cell_lineage"] == "T cell").sum() == ref.obs["cell_type"].isin(t_labels).sum()


def test_derived_fine_labels_are_the_group_labels():
    fat = sct.atlas.load_manifest("tabula_sapiens_fat")
    labels = mf.atlas_fine_labels(fat)
    assert "mesenchymal stromal cell" in labels and "endothelial cell" in labels
    conde = sct.atlas.load_manifest("conde2022_immune")
    known = mf.atlas_fine_labels(conde)
    assert len(known) == 42 and not any("doublets" in lab for lab in known)


# ---- the wheel --------------------------------------------------------------------------------


def test_wheel_force_includes_reference_atlases():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert include["reference_atlases"] == "sc_celltherapy/reference_atlases"
    assert (REPO_ROOT / "reference_atlases" / "schemas" / "atlas.schema.yaml").is_file()


def test_installed_layout_is_found_first(tmp_path, monkeypatch):
    """Inside a wheel the files sit at sc_celltherapy/reference_atlases: that copy wins."""
    package = tmp_path / "site-packages" / "sc_celltherapy"
    shutil.copytree(REPO_ROOT / "reference_atlases", package / "reference_atlases")
    monkeypatch.setattr(mf, "_PACKAGE_ROOT", package)
    assert mf.manifests_dir() == package / "reference_atlases"
    assert sct.atlas.load_profile("msc")["atlas"] == "tabula_sapiens_fat"
    assert len(sct.atlas.list_manifests()) == len(ATLASES) + len(PROFILES)


# ---- broken manifests are refused, naming the field -------------------------------------------


@pytest.fixture
def demo_atlas():
    return copy.deepcopy(sct.atlas.load_manifest("pbmc_demo"))


@pytest.fixture
def demo_profile():
    return copy.deepcopy(sct.atlas.load_profile("car_t_demo"))


def test_schema_error_names_the_field_and_what_it_expects(demo_atlas):
    demo_atlas["model"]["scvi"]["n_latent"] = "ten"
    with pytest.raises(ManifestError) as err:
        sct.atlas.validate_manifest(demo_atlas, "atlas")
    message = str(err.value)
    assert "$.model.scvi.n_latent" in message
    assert "'ten' is not of type 'integer'" in message
    assert "Dimension of the latent space" in message


def test_schema_error_for_a_missing_and_an_unknown_key(demo_atlas):
    missing = {k: v for k, v in demo_atlas.items() if k != "licence"}
    with pytest.raises(ManifestError, match="'licence' is a required property"):
        sct.atlas.validate_manifest(missing, "atlas")
    demo_atlas["colour"] = "blue"
    with pytest.raises(ManifestError, match=r"'colour' was unexpected.*Allowed keys here: \["):
        sct.atlas.validate_manifest(demo_atlas, "atlas")


def test_schema_refuses_an_hvg_flavour_the_build_does_not_implement(demo_atlas):
    demo_atlas["model"]["hvg_flavor"] = "seurat"
    with pytest.raises(ManifestError, match=r"\$\.model\.hvg_flavor.*seurat_v3"):
        sct.atlas.validate_manifest(demo_atlas, "atlas")


def test_schema_requires_a_policy_for_a_null_hash(demo_atlas):
    demo_atlas["source"] = [{"filename": "a.h5ad", "url": "https://example.org/a", "sha256": None}]
    demo_atlas["build"].update(reader="h5ad", matrix="a.h5ad")
    with pytest.raises(ManifestError, match=r"\$\.source\[0\].*'sha256_policy' is a required"):
        sct.atlas.validate_manifest(demo_atlas, "atlas")
    demo_atlas["source"][0]["sha256"] = "abc"
    with pytest.raises(ManifestError, match=r"\$\.source\[0\]\.sha256"):
        sct.atlas.validate_manifest(demo_atlas, "atlas")


def test_file_name_must_equal_name(tmp_path):
    folder = tmp_path / "atlases"
    folder.mkdir()
    path = folder / "other_name.yaml"
    shutil.copy(mf.manifests_dir() / "atlases" / "pbmc_demo.yaml", path)
    with pytest.raises(ManifestError, match=r"other_name\.yaml.*\$\.name.*'pbmc_demo' differs"):
        sct.atlas.validate_manifest(path)


def test_duplicate_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nname: b\n")
    with pytest.raises(ManifestError, match="duplicate key 'name'"):
        sct.atlas.validate_manifest(path, "atlas")


def test_atlas_cross_checks(demo_atlas):
    bad = copy.deepcopy(demo_atlas)
    bad["build"]["function"] = "os.system"
    with pytest.raises(ManifestError, match=r"\$\.build\.function.*function of sc_celltherapy"):
        sct.atlas.validate_manifest(bad, "atlas")
    bad = copy.deepcopy(demo_atlas)
    bad["build"]["derive_labels"][0]["groups"][1]["members"].append("CD19+ B")
    with pytest.raises(ManifestError, match=r"derive_labels\[0\].*\['CD19\+ B'\].*more than one"):
        sct.atlas.validate_manifest(bad, "atlas")
    bad = copy.deepcopy(demo_atlas)
    bad["build"]["derive_labels"][0]["groups"][1]["members"] = ["CD56 NK"]
    with pytest.raises(ManifestError, match=r"\['CD56 NK'\] are not in .*known_fine_labels"):
        sct.atlas.validate_manifest(bad, "atlas")
    bad = copy.deepcopy(demo_atlas)
    bad["source"] = [{"filename": "a.h5ad", "url": "https://x.org/a", "sha256": "0" * 64}]
    with pytest.raises(ManifestError, match=r"\$\.build\.reader.*'embedded'"):
        sct.atlas.validate_manifest(bad, "atlas")


def test_profile_must_name_an_existing_atlas(demo_profile):
    demo_profile["atlas"] = "no_such_atlas"
    with pytest.raises(ManifestError, match=r"\$\.atlas.*'no_such_atlas'.*available: \[.*pbmc"):
        sct.atlas.validate_manifest(demo_profile, "profile")
    demo_profile["atlas"] = "pbmc_demo"
    demo_profile["related_atlases"] = ["hlca"]
    with pytest.raises(ManifestError, match=r"related_atlases\[0\].*'hlca'"):
        sct.atlas.validate_manifest(demo_profile, "profile")


def test_profile_labels_must_be_atlas_labels(demo_profile):
    demo_profile["off_target"][0]["reference_labels"] = ["NK cells"]
    with pytest.raises(ManifestError) as err:
        sct.atlas.validate_manifest(demo_profile, "profile")
    message = str(err.value)
    assert "$.off_target[0].reference_labels[0]" in message
    assert "'NK cells' is not a fine label of atlas 'pbmc_demo'" in message
    assert "'CD56+ NK'" in message  # the known labels are listed


def test_profile_identity_consistency(demo_profile):
    bad = copy.deepcopy(demo_profile)
    bad["forbidden"][0]["reference_labels"].append("CD56+ NK")
    with pytest.raises(ManifestError, match="already belongs to identity 'NK cells'"):
        sct.atlas.validate_manifest(bad, "profile")
    bad = copy.deepcopy(demo_profile)
    bad["example_spec"]["max_identity_fraction"][0]["identity"] = "plasma cells"
    with pytest.raises(ManifestError, match=r"max_identity_fraction\[0\]\.identity"):
        sct.atlas.validate_manifest(bad, "profile")
    bad = copy.deepcopy(demo_profile)
    bad["target"]["markers"]["negative"].append("CD3E")
    with pytest.raises(ManifestError, match=r"\['CD3E'\] are both positive and negative"):
        sct.atlas.validate_manifest(bad, "profile")
    bad = copy.deepcopy(demo_profile)
    bad["example_spec"]["max_impurity"]["residual_pluripotent"] = 0.001
    with pytest.raises(ManifestError, match="no identity has class residual_pluripotent"):
        sct.atlas.validate_manifest(bad, "profile")


def test_profile_of_a_users_own_atlas(demo_profile, demo_atlas):
    demo_atlas["name"] = "my_pbmc"
    demo_profile["atlas"] = "my_pbmc"
    assert (
        sct.atlas.validate_manifest(demo_profile, "profile", atlas=demo_atlas)["atlas"] == "my_pbmc"
    )


# ---- what every profile must hold -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_example_spec_is_marked_as_an_example(name):
    spec = sct.atlas.load_profile(name)["example_spec"]
    assert spec["example"] is True
    assert "not a regulatory limit" in spec["note"].lower()
    assert 0 < spec["min_target_fraction"] <= 1


def test_schema_refuses_a_spec_not_marked_as_example(demo_profile):
    bad = copy.deepcopy(demo_profile)
    bad["example_spec"]["example"] = False
    with pytest.raises(ManifestError, match=r"\$\.example_spec\.example: True was expected"):
        sct.atlas.validate_manifest(bad, "profile")
    bad = copy.deepcopy(demo_profile)
    bad["example_spec"]["note"] = "An example."
    with pytest.raises(ManifestError, match=r"\$\.example_spec\.note"):
        sct.atlas.validate_manifest(bad, "profile")


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_has_target_off_target_forbidden_with_marker_panels(name):
    profile = sct.atlas.load_profile(name)
    assert profile["target"]["reference_labels"], "the target must name atlas labels"
    assert profile["off_target"] and profile["forbidden"]
    for identity in _identities(profile):
        assert identity["markers"]["positive"], identity["name"]
        assert identity["markers"]["negative"], identity["name"]
    known = mf.atlas_fine_labels(sct.atlas.load_manifest(profile["atlas"]))
    named = [lab for ident in _identities(profile) for lab in ident["reference_labels"]]
    assert set(named) <= set(known)
    assert len(named) == len(set(named))


@pytest.mark.parametrize("name", sorted(PSC_DERIVED))
def test_psc_derived_profiles_forbid_residual_pluripotent_cells(name):
    profile = sct.atlas.load_profile(name)
    residual = [x for x in profile["forbidden"] if x["class"] == "residual_pluripotent"]
    assert len(residual) == 1
    assert PLURIPOTENCY <= set(residual[0]["markers"]["positive"])
    assert "residual_pluripotent" in profile["example_spec"]["max_impurity"]


def test_profiles_use_the_product_markers():
    da = sct.atlas.load_profile("da_progenitor")
    assert {"FOXA2", "LMX1A", "EN1", "OTX2", "CORIN"} <= set(da["target"]["markers"]["positive"])
    names = {x["name"] for x in da["off_target"] + da["forbidden"]}
    assert {"serotonergic neurons", "vascular leptomeningeal / perivascular-like"} <= names
    msc = sct.atlas.load_profile("msc")
    assert {"NT5E", "THY1", "ENG"} <= set(msc["target"]["markers"]["positive"])
    assert {"PTPRC", "CD34", "HLA-DRA"} <= set(msc["target"]["markers"]["negative"])
    hep = sct.atlas.load_profile("hepatocyte_like")
    assert {"ALB", "APOA1", "TTR"} <= set(hep["target"]["markers"]["positive"])
    assert any("AFP" in s["markers"] for s in hep["states"])
    nk = sct.atlas.load_profile("ipsc_nk_t_car")
    t_cells = next(x for x in nk["forbidden"] if x["name"] == "residual T cells")
    assert {"CD3E", "TRAC"} <= set(t_cells["markers"]["positive"])


def test_registry_lists_bundles_and_manifests():
    table = sct.atlas.list()
    kinds = table.groupby("kind")["name"].apply(set)
    assert kinds["atlas"] == ATLASES and kinds["profile"] == PROFILES


def test_the_readme_profile_example_is_a_valid_marker_only_profile(tmp_path):
    """The profile reference_atlases/README.md shows a lab validates as written."""
    from sc_celltherapy.atlas._manifests import manifests_dir
    from sc_celltherapy.release import Spec

    text = (manifests_dir() / "README.md").read_text()
    start = text.index("```yaml") + len("```yaml")
    path = tmp_path / "my_da_product.yaml"
    path.write_text(text[start : text.index("```", start)])
    profile = sct.atlas.load_profile(path)
    assert profile["atlas"] is None
    spec = Spec.from_profile(path)
    assert spec.min_positive["FOXA2"].fraction == 0.8 and spec.example
    # a loaded profile (atlas None, as release pre-flight passes it) validates again: a
    # marker-only product given by path was refused at release before this
    assert Spec.from_profile(profile) == spec
    assert sct.atlas.validate_manifest(profile, "profile") == profile
