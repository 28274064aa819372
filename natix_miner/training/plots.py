"""PNG plots for evaluation reports (matplotlib, Agg backend: no display needed).

* :func:`reliability_diagram` - observed roadwork rate against predicted probability, per profile;
* :func:`pr_curves` - precision-recall curves with average precision, per profile;
* :func:`threshold_curves` - MCC against the decision threshold, with 0.5 (the validator's) marked.
* :func:`level_bars` - MCC per augmentation level, one bar per profile or expert.

Usage::

    from natix_miner.training.plots import reliability_diagram
    reliability_diagram({"demo-cpu": (labels, probs)}, "out/reliability.png")
"""

import typing
from pathlib import Path

import numpy as np

from natix_miner.training.metrics import mcc_curve, pr_curve, reliability_bins

Series = typing.Mapping[str, typing.Tuple[np.ndarray, np.ndarray]]  # name -> (labels, probs)


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=100)
    return plt, fig, ax


def _save(plt, fig, path: typing.Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def reliability_diagram(series: Series, path: typing.Union[str, Path], bins: int = 10) -> Path:
    plt, fig, ax = _figure()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    for name, (y, p) in series.items():
        b = [x for x in reliability_bins(y, p, bins) if x["count"]]
        if b:
            ax.plot([x["mean_p"] for x in b], [x["frac_pos"] for x in b], marker="o", label=name)
    ax.axvline(0.5, c="red", lw=0.8, alpha=0.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(roadwork)")
    ax.set_ylabel("observed roadwork rate")
    ax.set_title("Reliability")
    ax.legend(loc="upper left", fontsize=8)
    return _save(plt, fig, path)


def pr_curves(series: Series, path: typing.Union[str, Path]) -> Path:
    plt, fig, ax = _figure()
    for name, (y, p) in series.items():
        pr = pr_curve(y, p)
        if pr["precision"]:
            ax.plot(pr["recall"], pr["precision"], label=f"{name} (AP {pr['average_precision']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    return _save(plt, fig, path)


def threshold_curves(series: Series, path: typing.Union[str, Path]) -> Path:
    plt, fig, ax = _figure()
    for name, (y, p) in series.items():
        if len(y) and 0 < np.sum(y) < len(y):
            ts, m = mcc_curve(y, p)
            ax.plot(ts, m, label=name)
    ax.axvline(0.5, c="red", lw=0.8, label="validator threshold 0.5")
    ax.set_xscale("logit")
    ax.set_xlabel("decision threshold")
    ax.set_ylabel("MCC")
    ax.set_title("MCC against threshold")
    ax.legend(loc="lower center", fontsize=8)
    return _save(plt, fig, path)


def level_bars(table: typing.Mapping[str, typing.Mapping[typing.Any, float]], path: typing.Union[str, Path]) -> Path:
    """Grouped bars: MCC per augmentation level (``table``: name -> {level: MCC})."""
    plt, fig, ax = _figure()
    levels = sorted({int(k) for row in table.values() for k in row})
    width = 0.8 / max(1, len(table))
    for i, (name, row) in enumerate(table.items()):
        vals = [float(row.get(k, row.get(str(k), np.nan))) for k in levels]
        ax.bar(np.arange(len(levels)) + i * width - 0.4 + width / 2, vals, width, label=name)
    ax.set_xticks(np.arange(len(levels)), [f"level {k}" for k in levels])
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
    ax.set_ylabel("MCC")
    ax.set_title("MCC per augmentation level")
    ax.legend(loc="lower left", fontsize=8)
    return _save(plt, fig, path)
