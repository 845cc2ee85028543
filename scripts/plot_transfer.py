#!/usr/bin/env python3
"""The headline of the transfer benchmark as a picture: transfer gain vs target data size.

    python scripts/plot_transfer.py reports/transfer/hm-or.json reports/transfer/ind-off.json \\
        reports/transfer/off-ind.json reports/transfer/hm-or-baskets.json --out docs/transfer_gain.png

Reads the JSON that ``scripts/bench_transfer.py`` writes per experiment and draws, per experiment, the gain of
the guard's choice (``auto``, solid) and of the best single method in hindsight (dashed) in the experiment's
first metric, relative to target-only on the report split, at each target training size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRIC = {"hm-or": "Recall@12", "ind-off": "Recall@10", "off-ind": "Recall@10", "hm-or-baskets": "FITB"}


def experiment(run: dict) -> str:
    return run.get("experiment") or run["args"]["experiment"]  # runs saved before the key existed


def gains(run: dict) -> tuple[list[str], list[float], list[float]]:
    """(size labels, auto gain %, best single method gain %) of one experiment."""
    metric = METRIC[experiment(run)]
    sizes, auto, best = [], [], []
    for size, r in run["results"].items():
        per = {name: g[metric] for name, g in r["gain"].items() if g.get(metric) is not None}
        sizes.append(f"{float(size):.0%}")
        auto.append(100 * per.get("auto", 0.0))
        best.append(100 * max(v for k, v in per.items() if k != "auto"))
    return sizes, auto, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="<experiment>.json files from scripts/bench_transfer.py")
    ap.add_argument("--out", default="docs/transfer_gain.png")
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for path, colour in zip(args.runs, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        run = json.loads(Path(path).read_text())
        sizes, auto, best = gains(run)
        label = f"{run['source']} -> {run['target']} ({METRIC[experiment(run)]})"
        ax.plot(sizes, auto, "-o", color=colour, label=f"{label}, auto")
        ax.plot(sizes, best, "--", color=colour, alpha=0.6, label=f"{label}, best method")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("target training data")
    ax.set_ylabel("gain vs target-only, report split (%)")
    ax.set_title("Transfer gain vs target data size (solid: the guard's choice)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
