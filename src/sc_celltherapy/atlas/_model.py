"""The scvi-tools side of bundles: training, loading, query surgery, prediction.

Everything that imports torch, lightning or scvi lives here, imported lazily.
"""

from __future__ import annotations

import logging
import signal
import threading
import warnings
from contextlib import contextmanager

import numpy as np
from anndata import AnnData

from .._settings import settings


def accelerator() -> str:
    """The device models train and infer on, ``"gpu"`` or ``"cpu"``: from
    ``settings.accelerator`` (``"auto"``: the GPU when a CUDA device exists). Asking for
    ``"gpu"`` without a CUDA device is an :class:`~sc_celltherapy.InputError`."""
    import torch

    if settings.accelerator == "cpu":
        return "cpu"
    has_gpu = torch.cuda.is_available()
    if settings.accelerator == "gpu" and not has_gpu:
        from .._checks import InputError

        msg = "settings.accelerator='gpu' but no CUDA device is available; use 'auto' or 'cpu'."
        raise InputError(msg)
    return "gpu" if has_gpu else "cpu"


@contextmanager
def quiet_training():
    """Silence lightning's banner lines unless the package logs at debug level, and
    give back an interrupt as an interrupt: lightning turns Ctrl-C (and the CLI's SIGTERM)
    during a fit into ``sys.exit(1)`` after ignoring SIGINT for good."""
    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "scvi")
    old = {n: logging.getLogger(n).level for n in names}
    if settings.verbosity != "debug":  # "Seed set to 0", "GPU available: False", tips
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # lightning 2.x trips torch's LeafSpec deprecation on every fit: not ours, not
            # actionable by a user, and it cluttered the demo's output
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            # where Slurm is installed, lightning's device parsing (scvi-tools calls it on
            # every fit and query load) urges `srun` for a distributed run; ours is one process
            warnings.filterwarnings("ignore", message=r"The `srun` command is available")
            yield
    except SystemExit as err:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt("interrupted during model training") from err
    finally:
        for n, level in old.items():
            logging.getLogger(n).setLevel(level)


# scArches architecture (scvi-tools' reference-mapping tutorial): the encoder sees the batch, so
# surgery on a new lot's batch weights moves its cells in the latent space; layer norm instead of
# batch norm keeps the frozen reference statistics valid for a query of any size.
ARCHES_PARAMS = {
    "use_layer_norm": "both",
    "use_batch_norm": "none",
    "encode_covariates": True,
    "dropout_rate": 0.2,
}


def _trainer_kwargs() -> dict:
    from lightning.pytorch.plugins.environments import LightningEnvironment

    return {
        "accelerator": accelerator(),
        "devices": 1,
        "enable_progress_bar": settings.progress_bar,
        "enable_model_summary": False,
        "logger": False,
        # one process on one device, inside a SLURM job or not: lightning would otherwise take
        # a SLURM job's environment for a distributed run (and warn on any machine where
        # `srun` exists that it was not used)
        "plugins": [LightningEnvironment()],
    }


# On a GPU a minibatch's transfer, not its arithmetic, limits speed: scvi-tools can move sparse
# counts as sparse tensors from pinned host memory. Neither changes a minibatch's content, so
# training is the same model; on the CPU they only cost. Inference (labels, latent) has no
# gradient and no batch interplay (layer norm is per cell), so a GPU takes much larger batches;
# the CPU keeps scvi-tools' default, which the pinned CPU results were computed with. Mixed
# precision is not used: it changes the numbers, and no GPU run has shown that verdicts hold.
GPU_INFERENCE_BATCH = 16_384


def loader_kwargs() -> dict:
    """scvi-tools data-splitter options for the device training runs on."""
    if accelerator() != "gpu":
        return {}
    return {"load_sparse_tensor": True, "pin_memory": True}


def inference_batch_size() -> int | None:
    """Minibatch of prediction and latent inference: large on a GPU, scvi-tools' default
    (``None``) on the CPU."""
    return GPU_INFERENCE_BATCH if accelerator() == "gpu" else None


def _seed(seed: int) -> None:
    import scvi

    scvi.settings.seed = seed


def train_scanvi(
    train: AnnData,
    *,
    labels_key,
    batch_key,
    unlabeled,
    n_latent,
    n_layers,
    n_hidden,
    max_epochs,
    scanvi_max_epochs,
    n_samples_per_label,
    seed,
):
    import scvi

    with quiet_training():
        _seed(seed)
        scvi.model.SCVI.setup_anndata(train, batch_key=batch_key, labels_key=labels_key)
        vae = scvi.model.SCVI(
            train, n_latent=n_latent, n_layers=n_layers, n_hidden=n_hidden, **ARCHES_PARAMS
        )
        vae.train(
            max_epochs=max_epochs,
            train_size=1.0,
            datasplitter_kwargs=loader_kwargs(),
            **_trainer_kwargs(),
        )
        _seed(seed)
        lvae = scvi.model.SCANVI.from_scvi_model(
            vae, unlabeled_category=unlabeled, labels_key=labels_key
        )
        lvae.train(
            max_epochs=scanvi_max_epochs,
            train_size=1.0,
            n_samples_per_label=n_samples_per_label,
            datasplitter_kwargs=loader_kwargs(),
            **_trainer_kwargs(),
        )
    return lvae


def latent_of(model, adata: AnnData | None = None) -> np.ndarray:
    """Latent coordinates of ``adata`` (``None``: the model's own cells)."""
    return model.get_latent_representation(adata, batch_size=inference_batch_size())


def predict_probs(model, adata: AnnData, labels: list[str]) -> np.ndarray:
    """Soft label predictions as an array with columns in the order of ``labels``."""
    soft = model.predict(adata, soft=True, batch_size=inference_batch_size())
    return soft[labels].to_numpy(dtype=np.float64)


def surgery_epochs(n_cells: int, n_members: int = 1) -> int:
    """Surgery epochs of each of ``n_members`` models for a lot of ``n_cells``: about 100k cell
    passes shared by the members, between 5 and 50 per member.

    Measured on 10,000 cells resampled from CAR-T patient P01, mapped onto the other four
    patients (one model): accuracy 0.778, 0.777 and 0.777 after 5, 10 and 20 epochs. On patient
    P02's 1,574 cells mapped onto a 3-member bundle of the other patients without CD8 gdT: 50,
    21, 10 and 5 epochs per member gave CD8 gdT AUROC 0.877, 0.882, 0.882 and 0.883, accuracy
    on the other cells 0.742, 0.740, 0.745 and 0.751, in 110, 37, 20 and 9 s. Time grows with
    the epochs; the results do not.
    """
    return max(5, min(50, 100_000 // max(n_cells * n_members, 1)))


def surgery_batch_size(n_cells: int) -> int:
    """Minibatch of surgery: 128 (scvi-tools' default) for small lots, about 20 steps per epoch
    for large ones (at most 1024): a step's fixed overhead dominates small batches on a CPU.
    On the lot above, 20 epochs at 128, 512 and 1024 gave accuracy 0.777, 0.777 and 0.778."""
    return int(min(1024, max(128, n_cells // 20)))


def map_query(
    query: AnnData, reference, *, train: bool, max_epochs: int, batch_size: int, seed: int
):
    """scArches surgery: load the query onto the reference model (a model directory or a
    trained SCANVI, which is left unchanged). Only batch-specific weights are trained, and only
    when the query brings batches the reference has not seen; otherwise the reference encoder
    applies as it is (no training, nothing stochastic)."""
    import scvi

    with quiet_training(), warnings.catch_warnings():
        scvi.model.SCANVI.prepare_query_anndata(query, reference)
        _seed(seed)
        model = scvi.model.SCANVI.load_query_data(query, reference, accelerator=accelerator())
        if train and max_epochs > 0:
            _seed(seed)
            # scvi-tools' load_query_data puts the module in eval mode on purpose (surgery
            # trains without dropout); lightning warns about that at the start of training
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
            model.train(
                max_epochs=max_epochs,
                batch_size=batch_size,
                train_size=1.0,
                plan_kwargs={"weight_decay": 0.0},
                datasplitter_kwargs=loader_kwargs(),
                **_trainer_kwargs(),
            )
        model.is_trained_ = True
    return model
