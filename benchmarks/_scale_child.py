"""One measured release in a fresh process, with time and peak memory per step.

Usage: ``python -m _scale_child {sct,peer} LOT.h5ad BUNDLE_DIR OUT_DIR SEED [accelerator]``;
prints one JSON line last: per step (and, for ours, per sub-step the package logs) seconds and
peak resident memory, the process's VmHWM and the release's numbers.

Peak memory per step: a thread samples VmRSS every 20 ms and charges it to every step open at
that moment. Ours names its steps through the package logger's timed lines ("X ..." /
"finished X"), so the breakdown is the package's own, not a copy of its code; the peer's
steps are the scanpy + scvi-tools calls a user writes.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from _common import peak_rss_mb
from _release_child import peer_surgery

CHANNEL_KEY = "channel"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class StepMeter:
    """Open steps (a stack) with their seconds and the peak RSS seen while each was open."""

    def __init__(self) -> None:
        self.stack: list[tuple[str, float]] = []
        self.steps: dict[str, dict] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    def sample(self) -> None:
        rss = _rss_mb()
        with self.lock:
            for name, _ in self.stack:
                row = self.steps[name]
                row["peak_mb"] = max(row["peak_mb"], rss)

    def open(self, name: str) -> None:
        with self.lock:
            depth = len(self.stack)
            self.steps.setdefault(name, {"seconds": 0.0, "peak_mb": 0.0, "depth": depth})
            self.stack.append((name, time.perf_counter()))
        self.sample()

    def close(self, name: str) -> None:
        self.sample()
        with self.lock:
            while self.stack:  # a step left open by an exception closes with its parent
                top, start = self.stack.pop()
                self.steps[top]["seconds"] += time.perf_counter() - start
                if top == name:
                    break

    @contextmanager
    def step(self, name: str):
        self.open(name)
        try:
            yield
        finally:
            self.close(name)

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join()
        return [
            {"step": k, **{f: v if v is None else round(v, 3) for f, v in row.items()}}
            for k, row in self.steps.items()
        ]


class _TimedLines(logging.Handler):
    """Turns the package's ``timed`` log lines into meter steps."""

    def __init__(self, meter: StepMeter) -> None:
        super().__init__(logging.INFO)
        self.meter = meter

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.endswith(" ..."):
            self.meter.open(msg[:-4])
        elif msg.startswith("finished ") and msg.endswith("s)"):
            self.meter.close(msg[len("finished ") : msg.rindex(" (")])


def run_sct(lot: Path, bundle: Path, out: Path, seed: int, meter: StepMeter) -> dict:
    import sc_celltherapy as sct
    from sc_celltherapy._logging import logger

    logger.addHandler(_TimedLines(meter))
    logger.setLevel(logging.INFO)
    for handler in logger.handlers[:-1]:
        handler.setLevel(logging.WARNING)  # the meter listens; stderr stays quiet
    with meter.step("release (total)"):
        release = sct.release.run(
            lot,
            out_dir=out,
            lot_id=lot.stem,
            operator="benchmark",
            product="car_t_demo",
            reference=bundle,
            batch_key=CHANNEL_KEY,
            seed=seed,
        )
    r = release.results
    # reading and writing happen outside the logged steps: their seconds, peak not separable
    for name in ("read", "write"):
        meter.steps[f"{name} (seconds from results.json)"] = {
            "seconds": r["run"]["timings_s"][name],
            "peak_mb": None,
            "depth": 1,
        }
    return {
        "timings_s": r["run"]["timings_s"],
        "n_assessed": r["qc"]["n_assessed"],
        "verdict": release.verdict,
        "n_doublets": r["qc"]["doublets"]["n_called"],
        "purity": [
            {"name": name, **{k: row[k] for k in ("n", "fraction", "ci_low", "ci_high", "verdict")}}
            for name, row in {"target": r["purity"]["target"], **r["purity"]["impurities"]}.items()
        ],
    }


def run_peer(lot: Path, bundle: Path, out: Path, seed: int, meter: StepMeter) -> dict:
    """What a scanpy + scvi-tools user writes for the same chain: QC with scrublet per channel,
    clustering and UMAP, scArches surgery on the bundle's first model, the lot written."""
    import anndata as ad
    import scanpy as sc

    s = meter.step
    with s("release (total)"):
        with s("read"):
            adata = ad.read_h5ad(lot)
        with s("QC metrics"):
            adata.var["mt"] = adata.var_names.str.startswith("MT-")
            sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], inplace=True, percent_top=None)
            sc.pp.filter_cells(adata, min_genes=200)
            adata = adata[adata.obs["pct_counts_mt"] < 20].copy()
        with s("scrublet"):
            sc.pp.scrublet(adata, batch_key=CHANNEL_KEY, random_state=seed, verbose=False)
            adata = adata[~adata.obs["predicted_doublet"]].copy()
        with s("map"):
            peer_surgery(adata, bundle, seed, batches=adata.obs[CHANNEL_KEY].astype(str).to_numpy())
        with s("normalise and log"):
            adata.layers["counts"] = adata.X.copy()
            sc.pp.normalize_total(adata)
            sc.pp.log1p(adata)
        with s("highly variable genes"):
            sc.pp.highly_variable_genes(adata, n_top_genes=2000)
        with s("PCA"):
            sc.pp.pca(adata, mask_var="highly_variable", random_state=seed)
        with s("neighbours"):
            sc.pp.neighbors(adata, use_rep="X_scanvi", random_state=seed)
        with s("Leiden"):
            sc.tl.leiden(adata, flavor="igraph", n_iterations=2, random_state=seed)
        with s("UMAP"):
            sc.tl.umap(adata, random_state=seed)
        with s("write"):
            adata.write_h5ad(out / "lot.h5ad")
    return {"n_assessed": int(adata.n_obs)}


if __name__ == "__main__":
    which, lot, bundle, out, seed = sys.argv[1:6]
    if len(sys.argv) > 6:
        import sc_celltherapy as sct

        sct.settings.accelerator = sys.argv[6]
    meter = StepMeter()
    start = time.perf_counter()
    fn = run_sct if which == "sct" else run_peer
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if which == "peer":
        Path(out).mkdir(parents=True)
    result = fn(Path(lot), Path(bundle), Path(out), int(seed), meter)
    result |= {
        "total_s": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
        "steps": meter.stop(),
    }
    print(json.dumps(result))
