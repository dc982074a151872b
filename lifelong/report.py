"""What a person reads at the end of a run: the matrix table and its heatmap.

The matrix is the run's metric (``summary["metric"]``): accuracy for classifiers, ROC-AUC for
anomaly detectors, whose table also shows PR-AUC and the threshold's figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lifelong.metrics import names


MAX_ANNOTATED = 30  # rows or columns beyond which the heatmap drops its per-cell labels and ticks


def _cell(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def table(summary: dict[str, Any]) -> str:
    """The metric's matrix (rows: generations, columns: experiences) and its averages, BWT, FWT and forgetting."""
    keys = names(summary.get("metric", "accuracy"))
    matrix = summary[keys["matrix"]]
    columns = summary["experiences"]
    lines = [f"{keys['label']} matrix R[j][i] (row j: after generation j, column i: experience i)"]
    lines.append("        " + " ".join(f"exp {c:<2}" for c in columns))
    verdicts = [g.get("promotion") for g in summary.get("generations", [])]
    for j, row in enumerate(matrix):
        lines.append(f"gen {j:<3} " + " ".join(_cell(v) for v in row) + _verdict(verdicts[j] if j < len(verdicts) else None))
    if summary.get(keys["initial"]):
        lines.append("initial " + " ".join(_cell(v) for v in summary[keys["initial"]]))

    def fmt(key: str, signed: bool = False) -> str:
        value = summary.get(key)
        return "n/a" if value is None else f"{value:+.4f}" if signed else f"{value:.4f}"

    lines.append(
        f"{keys['short']} {fmt(keys['avg'])}   BWT {fmt(keys['bwt'], True)}   "
        f"FWT {fmt(keys['fwt'], True)}   forgetting {fmt(keys['forgetting'])}   prequential {fmt(keys['prequential'])}"
    )
    if "threshold" in summary:
        lines.append(
            f"PR-AUC {fmt('avg_pr_auc')}   threshold {fmt_value(summary['threshold'])}   "
            f"precision {fmt('precision')}   recall {fmt('recall')}   F1 {fmt('f1')}   false alarms {fmt('false_alarm_rate')}"
        )
    lines.append(
        f"{summary['samples_seen']} stream samples ({summary['trained_samples']} trained), "
        f"{summary['samples_per_second']:.0f} samples/s training, "
        f"{summary['wall_seconds']:.1f} s wall, {len(summary['generations'])} generations, "
        f"{summary['dead_letters']['count']} dead letters"
        + (f" (+ {summary['dead_letters']['not_applied']} batches not applied)" if summary["dead_letters"].get("not_applied") else "")
    )
    champion = summary.get("champion")
    if champion:
        label = "none" if champion["champion"] is None else champion["champion"]
        if isinstance(label, int):
            label = f"generation {label}"
        lines.append(f"promotion gate: {len(champion['passed'])} of {champion['judged']} generations passed; champion: {label}")
    return "\n".join(lines)


def fmt_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _verdict(promotion: dict[str, Any] | None) -> str:
    """The gate's verdict at the end of a matrix row: ``  pass``, or ``  FAIL`` and the failed rules."""
    if not promotion:
        return ""
    if promotion.get("passed"):
        return "   pass"
    failed = [name for name, rule in promotion.get("rules", {}).items() if not rule.get("passed")]
    return "   FAIL " + ", ".join(failed)


def heatmap(summary: dict[str, Any], path: str | Path) -> Path:
    """Save the accuracy matrix as an annotated heatmap PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = names(summary.get("metric", "accuracy"))
    values = summary[keys["matrix"]]
    matrix = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float).reshape(
        len(values), len(summary["experiences"])
    )
    rows, cols = matrix.shape
    # A long session (window boundaries on an endless stream) has hundreds of generations: the figure
    # stays a bounded size, and cells are annotated only while they are large enough to read.
    annotate = rows <= MAX_ANNOTATED and cols <= MAX_ANNOTATED
    size = (1.0 + 0.8 * min(cols, MAX_ANNOTATED), 1.0 + 0.6 * min(rows, MAX_ANNOTATED))
    fig, ax = plt.subplots(figsize=size, dpi=120)
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest")
    for j in range(rows if annotate else 0):
        for i in range(cols):
            if not np.isnan(matrix[j, i]):
                colour = "black" if matrix[j, i] > 0.6 else "white"
                ax.text(i, j, f"{matrix[j, i]:.2f}", ha="center", va="center", color=colour, fontsize=8)
    if annotate:
        ax.set_xticks(range(cols), [str(c) for c in summary["experiences"]])
        ax.set_yticks(range(rows), [str(j) for j in range(rows)])
    ax.set_xlabel("evaluated on experience")
    ax.set_ylabel("after generation")
    average, title = summary.get(keys["avg"]), f"{keys['label']} matrix"
    short = "ACC" if keys["avg"] == "acc" else f"average {keys['short']}"
    ax.set_title(f"{title} ({short} {average:.3f})" if average is not None else title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
