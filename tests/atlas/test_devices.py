"""The accelerator setting reaches every training and inference call (issue 20): the GPU
options scvi-tools provides are used on a GPU and left out on the CPU, and mapping on a GPU
gives the CPU's labels (a test that needs a CUDA device and skips without one)."""

from __future__ import annotations

import numpy as np
import pytest

import sc_celltherapy as sct
from sc_celltherapy.atlas import _model


def test_gpu_options_only_on_a_gpu(monkeypatch):
    monkeypatch.setattr(_model, "accelerator", lambda: "cpu")
    assert _model.loader_kwargs() == {} and _model.inference_batch_size() is None
    monkeypatch.setattr(_model, "accelerator", lambda: "gpu")
    assert _model.loader_kwargs() == {"load_sparse_tensor": True, "pin_memory": True}
    assert _model.inference_batch_size() == _model.GPU_INFERENCE_BATCH


def test_training_and_inference_receive_the_device_options(monkeypatch):
    """Every call that trains or infers takes the options from the two functions above: with
    them patched to sentinels, surgery training, prediction and latent inference each receive
    the sentinel (scvi-tools itself is replaced by a recorder)."""
    seen = []

    class Recorder:
        def train(self, **kwargs):
            seen.append(("train", kwargs["datasplitter_kwargs"]))

        def predict(self, adata, soft, batch_size):
            seen.append(("predict", batch_size))
            import pandas as pd

            return pd.DataFrame({"a": [1.0]})

        def get_latent_representation(self, adata, batch_size):
            seen.append(("latent", batch_size))
            return np.zeros((1, 2))

    sentinel_loader, sentinel_batch = {"sentinel": True}, 4242
    monkeypatch.setattr(_model, "loader_kwargs", lambda: sentinel_loader)
    monkeypatch.setattr(_model, "inference_batch_size", lambda: sentinel_batch)
    monkeypatch.setattr(_model, "accelerator", lambda: "cpu")
    import scvi

    monkeypatch.setattr(scvi.model.SCANVI, "prepare_query_anndata", lambda q, r: None)
    monkeypatch.setattr(scvi.model.SCANVI, "load_query_data", lambda q, r, accelerator: Recorder())
    model = _model.map_query(None, None, train=True, max_epochs=1, batch_size=8, seed=0)
    _model.predict_probs(model, None, ["a"])
    _model.latent_of(model, None)
    assert seen == [
        ("train", sentinel_loader),
        ("predict", sentinel_batch),
        ("latent", sentinel_batch),
    ]


@pytest.mark.gpu
def test_mapping_on_a_gpu_gives_the_cpus_labels(cart_product_qc, demo_bundle):
    """The real CAR-T product mapped onto pbmc_demo on the GPU and on the CPU (same seed):
    labels agree for at least 99% of cells and the target fraction moves by under 0.5 points."""
    on = {}
    for device in ("cpu", "gpu"):
        sct.settings.accelerator = device
        try:
            lot = cart_product_qc.copy()
            sct.tl.map_to_reference(lot, demo_bundle, seed=0)
            on[device] = lot.obs["sct_ref_label"].astype(str).to_numpy()
        finally:
            sct.settings.accelerator = "auto"
    assert (on["cpu"] == on["gpu"]).mean() >= 0.99
    t_cells = [label for label in demo_bundle.labels if "T" in label]
    shift = np.isin(on["cpu"], t_cells).mean() - np.isin(on["gpu"], t_cells).mean()
    assert abs(shift) < 0.005
