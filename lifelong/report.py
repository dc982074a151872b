"""What a person reads at the end of a run: the accuracy-matrix table and its heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import Any


MAX_ANNOTATED = 30  # rows or columns beyond which the heatmap drops its per-cell labels and ticks


def _cell(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def table(summary: dict[str, Any]) -> str:
    """The accuracy matrix (rows: generations, columns: experiences) and ACC/BWT/FWT/forgetting."""
    matrix = summary["accuracy_matrix"]
    columns = summary["experiences"]
    lines = ["accuracy matrix R[j][i] (row j: after generation j, column i: experience i)"]
    lines.append("        " + " ".join(f"exp {c:<2}" for c in columns))
    verdicts = [g.get("promotion") for g in summary.get("generations", [])]
    for j, row in enumerate(matrix):
        lines.append(f"gen {j:<3} " + " ".join(_cell(v) for v in row) + _verdict(verdicts[j] if j < len(verdicts) else None))
    if summary.get("initial_accuracy"):
        lines.append("initial " + " ".join(_cell(v) for v in summary["initial_accuracy"]))

    def fmt(key: str) -> str:
        value = summary.get(key)
        return "n/a" if value is None else f"{value:+.4f}" if key in ("bwt", "fwt") else f"{value:.4f}"

    lines.append(
        f"ACC {fmt('acc')}   BWT {fmt('bwt')}   FWT {fmt('fwt')}   forgetting {fmt('forgetting')}   "
        f"prequential {fmt('prequential_accuracy')}"
    )
    lines.append(
        f"{summary['samples_seen']} stream samples ({summary['trained_samples']} trained), "
        f"{summary['samples_per_second']:.0f} samples/s training, "
        f"{summary['wall_seconds']:.1f} s wall, {len(summary['generations'])} generations, "
        f"{summary['dead_letters']['count']} dead letters"
    )
    champion = summary.get("champion")
    if champion:
        label = "none" if champion["champion"] is None else champion["champion"]
        if isinstance(label, int):
            label = f"generation {label}"
        lines.append(f"promotion gate: {len(champion['passed'])} of {champion['judged']} generations passed; champion: {label}")
    return "\n".join(lines)


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

    matrix = np.array(
        [[np.nan if v is None else v for v in row] for row in summary["accuracy_matrix"]], dtype=float
    ).reshape(len(summary["accuracy_matrix"]), len(summary["experiences"]))
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
    acc = summary.get("acc")
    ax.set_title(f"accuracy matrix (ACC {acc:.3f})" if acc is not None else "accuracy matrix", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
