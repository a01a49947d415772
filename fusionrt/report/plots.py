"""The report's PNG plots (matplotlib, Agg). Each function writes one file atomically and returns its name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.io import atomic_path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _pyplot().close(fig)
    return path.name


def _label(row: dict[str, Any]) -> str:
    return f"{row['backend']} {row['precision']}"


def _shapes(rows: list[dict[str, Any]]) -> list[tuple[int, ...]]:
    """Shapes ordered by the work they take (FLOPs)."""
    flops = {tuple(r["shape"]): r["flops"] for r in rows}
    return sorted(flops, key=lambda s: (flops[s], s))


def latency_vs_shape(rows: list[dict[str, Any]], path: Path) -> str:
    plt = _pyplot()
    shapes = _shapes(rows)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for label in dict.fromkeys(_label(r) for r in rows):
        by_shape = {tuple(r["shape"]): r for r in rows if _label(r) == label}
        xs = [i for i, s in enumerate(shapes) if s in by_shape]
        ax.plot(xs, [by_shape[shapes[i]]["p50_ms"] for i in xs], marker="o", label=label)
        ax.fill_between(xs, [by_shape[shapes[i]]["p50_ms"] for i in xs],
                        [by_shape[shapes[i]]["p90_ms"] for i in xs], alpha=0.15)
    ax.set_xticks(range(len(shapes)), ["/".join(map(str, s)) for s in shapes], rotation=45 if len(shapes) > 6 else 0)
    ax.set_xlabel("shape B/T/M (ordered by FLOPs)")
    ax.set_ylabel("latency p50 (ms), band to p90")
    ax.set_yscale("log")
    ax.set_title("Fusion graph latency per backend and precision")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _grouped_bars(ax: Any, shapes: list[tuple[int, ...]], series: dict[str, dict[tuple[int, ...], float]]) -> None:
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = np.arange(len(shapes)) + (i - (len(series) - 1) / 2) * width
        heights = [values.get(s, 0.0) for s in shapes]
        bars = ax.bar(xs, heights, width, label=label)
        ax.bar_label(bars, [f"{h:.3g}" for h in heights], fontsize=7, padding=1)
    ax.set_xticks(range(len(shapes)), ["/".join(map(str, s)) for s in shapes])
    ax.set_xlabel("shape B/T/M")
    top = max((v for values in series.values() for v in values.values()), default=1.0)
    ax.set_ylim(0, top * 1.12)  # room for the value labels


def _legend_outside(ax: Any) -> None:
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def speedup(rows: list[dict[str, Any]], path: Path) -> str:
    plt = _pyplot()
    rows = [r for r in rows if r["backend"] != "torch" and r["speedup_vs_torch"]]
    shapes = _shapes(rows)
    series: dict[str, dict[tuple[int, ...], float]] = {}
    for r in rows:
        series.setdefault(_label(r), {})[tuple(r["shape"])] = r["speedup_vs_torch"]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    _grouped_bars(ax, shapes, series)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="PyTorch eager fp32")
    ax.set_ylabel("speed-up over PyTorch eager fp32 (p50)")
    ax.set_title("Speed-up over PyTorch eager fp32, measured in the same run")
    _legend_outside(ax)
    fig.tight_layout()
    return _save(fig, path)


def peak_fraction(rows: list[dict[str, Any]], peaks: dict[str, Any], path: Path) -> str:
    plt = _pyplot()
    rows = [r for r in rows if r["fraction_of_measured_peak"] is not None]
    shapes = _shapes(rows)
    series: dict[str, dict[tuple[int, ...], float]] = {}
    for r in rows:
        series.setdefault(_label(r), {})[tuple(r["shape"])] = 100 * r["fraction_of_measured_peak"]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    _grouped_bars(ax, shapes, series)
    ax.axhline(100, color="black", linewidth=1, linestyle="--")
    ax.set_ylabel("achieved FLOP/s, % of large-GEMM rate")
    ax.set_title(f"Fraction of peak (fp32 GEMM {peaks['measured_fp32_flops'] / 1e9:.0f} GFLOP/s, int8 GEMM "
                 f"{peaks['measured_int8_ops'] / 1e9:.0f} GOP/s measured; paper fp32 "
                 f"{peaks['paper']['fp32_flops'] / 1e9:.0f})", fontsize=9)
    ax.set_ylim(0, max(105.0, ax.get_ylim()[1]))  # fractions over 100% stay visible
    _legend_outside(ax)
    fig.tight_layout()
    return _save(fig, path)


def error_distribution(errors: dict[str, dict[str, list[float]]], path: Path) -> str:
    plt = _pyplot()
    labels = list(errors)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, output in zip(axes, ("logits", "hidden"), strict=True):
        data = [np.maximum(np.asarray(errors[label][f"{output}_max_abs"]), 1e-9) for label in labels]
        ax.boxplot(data, whis=(1, 99), showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(labels) + 1), [label.replace(" ", "\n") for label in labels], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel(f"max |{output} - fp32 PyTorch| per question")
        ax.set_title(f"{output}: error per held-out question")
        ax.grid(True, which="major", axis="y", alpha=0.3)
    fig.suptitle("Error distribution against fp32 PyTorch (box: quartiles, whiskers: 1st-99th percentile)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_by_kind(accuracy: dict[str, Any], path: Path) -> str:
    plt = _pyplot()
    results = accuracy["accuracy"]
    kinds = ["overall", *accuracy["questions_per_kind"]]
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / max(1, len(results))
    low = 100.0
    for i, (label, result) in enumerate(results.items()):
        values = [100 * (result["overall"] if k == "overall" else result["per_kind"].get(k, 0.0)) for k in kinds]
        low = min(low, *values)
        ax.bar(np.arange(len(kinds)) + (i - (len(results) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(range(len(kinds)), [f"{k}\n({accuracy['questions_per_kind'].get(k, accuracy['questions'])})"
                                      for k in kinds], fontsize=8)
    ax.set_ylim(max(0.0, low - 3), 100.5)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"Accuracy per precision and question kind ({accuracy['questions']} held-out questions, "
                 "count per kind in brackets)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
