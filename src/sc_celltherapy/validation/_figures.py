"""The dossier's figures, drawn from a :class:`ValidationResult` (PNG bytes, one per parameter
group): recovery, linearity with residuals, precision by level, detection, robustness."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _panels(n: int, height: float = 3.2, rows: int = 1):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, n, figsize=(4.2 * n, height * rows), squeeze=False)
    return fig, axes


def _band(ax, criterion, *, horizontal=True) -> None:
    if not criterion:
        return
    lo, hi = criterion.get("min", np.nan), criterion.get("max", np.nan)
    for v in (lo, hi):
        if np.isfinite(v):
            ax.axhline(v, color="#c62828", lw=0.8, ls="--")


def figures(result) -> dict[str, bytes]:
    """PNG figures of the dossier, keyed ``recovery``, ``linearity``, ``precision``,
    ``detection`` and ``robustness`` (the last only with robustness runs)."""
    acc = result.plan.content["acceptance"]
    mixtures = result.mixtures
    keys = list(dict.fromkeys(result.levels["impurity"]))
    out = {}

    fig, axes = _panels(len(keys))
    for ax, key in zip(axes[0], keys, strict=True):
        m = mixtures[(mixtures["impurity"] == key) & (mixtures["true_fraction"] > 0)]
        ax.scatter(m["true_fraction"], m["estimate"] / m["true_fraction"], s=10, alpha=0.5)
        lv = result.levels[result.levels["impurity"] == key]
        ax.plot(lv["true_fraction"], lv["recovery"], "o-", color="k", ms=4, label="mean")
        _band(ax, acc.get("recovery"))
        ax.set(xscale="log", title=key, xlabel="spiked fraction", ylabel="recovery")
    axes[0][0].legend(fontsize=8)
    out["recovery"] = _png(fig)

    fig, axes = _panels(len(keys), rows=2)
    for j, key in enumerate(keys):
        m = mixtures[(mixtures["impurity"] == key) & (mixtures["true_fraction"] > 0)]
        fit = _value(result, key, "slope"), _value(result, key, "intercept")
        x = np.linspace(0, m["true_fraction"].max(), 50)
        ax = axes[0][j]
        ax.scatter(m["true_fraction"], m["estimate"], s=10, alpha=0.5)
        ax.plot(x, x, color="grey", lw=0.8, label="estimate = truth")
        ax.plot(x, fit[0] * x + fit[1], color="k", label=f"fit: slope {fit[0]:.3f}")
        ax.set(title=key, xlabel="spiked fraction", ylabel="estimated fraction")
        ax.legend(fontsize=8)
        resid = m["estimate"] - (fit[0] * m["true_fraction"] + fit[1])
        axes[1][j].scatter(m["true_fraction"], resid, s=10, alpha=0.5)
        axes[1][j].axhline(0, color="grey", lw=0.8)
        axes[1][j].set(xlabel="spiked fraction", ylabel="residual")
    out["linearity"] = _png(fig)

    fig, axes = _panels(len(keys))
    for ax, key in zip(axes[0], keys, strict=True):
        lv = result.levels[result.levels["impurity"] == key]
        ax.plot(lv["true_fraction"], lv["cv_repeatability"], "o-", label="repeatability")
        ax.plot(lv["true_fraction"], lv["cv_intermediate"], "s--", label="intermediate (seeds)")
        if "cv_between_base_batches" in lv:
            ax.plot(lv["true_fraction"], lv["cv_between_base_batches"], "^:", label="base batches")
        _band(ax, acc.get("repeatability_cv"))
        ax.set(xscale="log", title=key, xlabel="spiked fraction", ylabel="CV")
    axes[0][0].legend(fontsize=8)
    out["precision"] = _png(fig)

    fig, axes = _panels(len(keys))
    for ax, key in zip(axes[0], keys, strict=True):
        lv = result.levels[result.levels["impurity"] == key]
        ax.plot(lv["true_fraction"], lv["detected_rate"], "o-", label="detected (> LoB)")
        ax.axhline(0.95, color="grey", lw=0.8, ls=":")
        for name, style in (("lod", "-"), ("lod_probit", "--"), ("sampling_lod", ":")):
            v = _value(result, key, name)
            if v is not None and not pd.isna(v):
                ax.axvline(v, color="#1565c0", ls=style, lw=1, label=name)
        ax.set(xscale="log", ylim=(-0.05, 1.05), title=key, xlabel="spiked fraction")
        ax.set_ylabel("share of mixtures detected")
        ax.legend(fontsize=7)
    out["detection"] = _png(fig)

    rob = result.robustness[result.robustness["factor"] != "nominal"]
    if len(rob):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 0.4 * len(rob) + 1.2))
        labels = [f"{r.factor} = {r.level:g}" for r in rob.itertuples()]
        shift = rob["max_abs_shift"].fillna(1.0).to_numpy()
        colours = ["#c62828" if c else "#2e7d32" for c in rob["verdicts_changed"]]
        ax.barh(labels, 100 * shift, color=colours)
        ax.invert_yaxis()
        ax.set_xlabel(
            "largest shift of a release fraction (percentage points); red: a verdict changed"
        )
        out["robustness"] = _png(fig)
    return out


def _value(result, key: str, parameter: str):
    p = result.parameters
    row = p[(p["impurity"] == key) & (p["parameter"] == parameter)]
    return None if row.empty else row["value"].iloc[0]
