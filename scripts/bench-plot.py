#!/usr/bin/env python3
"""Draws the benchmark plots: one PNG per plot spec in statecast-bench's results.json.

    scripts/bench-plot.py RESULTS_JSON OUT_DIR

Spec kinds: "percentiles" (one line per series, latency in ms over the percentiles, log scale)
and "bars" (one bar per label). Prints the name of every PNG written, one per line.
Needs matplotlib (scripts/bench installs a pinned one into a venv).
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def nines(p):
    """Position of a percentile on a 'number of nines' axis: 50 -> 0.3, 90 -> 1, 99 -> 2."""
    import math

    return -math.log10(max(1e-6, 1.0 - min(p, 99.9999) / 100.0))


def percentiles(spec, ax):
    ticks = set()
    for series in spec["series"]:
        points = [(p, ms) for p, ms in series["points"] if ms is not None and ms == ms]
        if not points:
            continue
        ax.plot([nines(p) for p, _ in points], [ms for _, ms in points], marker="o", label=series["label"])
        ticks.update(p for p, _ in points)
    ticks = sorted(ticks)
    ax.set_xticks([nines(p) for p in ticks])
    ax.set_xticklabels(["max" if p >= 100 else f"p{p:g}" for p in ticks], rotation=45)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_xlabel("percentile")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")


def bars(spec, ax):
    labels = [b["label"] for b in spec["bars"]]
    values = [b["value"] for b in spec["bars"]]
    drawn = ax.bar(labels, values, color="tab:blue")
    ax.bar_label(drawn, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.1f}" for v in values], fontsize="small")
    ax.set_ylabel(spec.get("ylabel", ""))
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(True, axis="y", alpha=0.3)


def main():
    results, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    for spec in json.loads(results.read_text())["plots"]:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        {"percentiles": percentiles, "bars": bars}[spec["kind"]](spec, ax)
        ax.set_title(spec["title"])
        fig.tight_layout()
        fig.savefig(out_dir / spec["file"])
        plt.close(fig)
        print(spec["file"])


if __name__ == "__main__":
    main()
