"""The report's "Learning curve" section and its plot, from `repro curve`'s curve.json
(repro/curve.py makes it; nothing here trains or evaluates)."""

from __future__ import annotations

import json

from repro.report.rundata import RunData, error_bars, figure_block, png_of

BASE_STYLE = {"base": ("completion prompt", "#8c8c8c"), "base-instruct": ("instruction prompt", "#dd8452")}


def curve_png(r: dict) -> bytes:
    """pass@1 against pairs (log2 axis), one panel per benchmark split, with Wilson intervals; the
    base rows as bands across the panel (they have no pairs)."""
    benches = list(dict.fromkeys(p["benchmark"] for p in r["points"])) or ["-"]

    def draw(fig):
        for i, b in enumerate(benches):
            ax = fig.add_subplot(1, len(benches), i + 1)
            pts = sorted((p for p in r["points"] if p["benchmark"] == b and p["pairs"] > 0), key=lambda p: p["pairs"])
            for p in (p for p in r["points"] if p["benchmark"] == b and p["row"] in BASE_STYLE):
                label, color = BASE_STYLE[p["row"]]
                ax.axhspan(100 * p["ci95"][0], 100 * p["ci95"][1], color=color, alpha=0.15)
                ax.axhline(100 * p["pass@1"], color=color, ls="--", lw=1.2, label=f"base, {label}")
            if pts:
                x = [p["pairs"] for p in pts]
                y = [100 * p["pass@1"] for p in pts]
                ax.errorbar(x, y, yerr=error_bars(pts), fmt="o-", color="#4c72b0", capsize=3, label="fine-tuned")
                ax.set_xscale("log", base=2)
                ax.set_xticks(x, [str(v) for v in x])
            ax.set_title(b, fontsize=9)
            ax.set_xlabel("training pairs", fontsize=8)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_ylabel("pass@1, %", fontsize=8)
                ax.legend(fontsize=7, loc="best")
    return png_of(draw, (max(4.0, 2.6 * len(benches)), 3.0))


def sec_curve(r: RunData) -> list:
    path = r.path / "curve" / "curve.json"
    if not path.exists():
        return [("p", "No learning curve for this run: `repro curve RUN --sizes 0,50,100,…` trains the student on "
                      "nested subsets of its pairs and evaluates each (docs/curve.md).")]
    c = json.loads(path.read_text())
    rows = list(dict.fromkeys(p["row"] for p in c["points"]))
    benches = list(dict.fromkeys(p["benchmark"] for p in c["points"]))
    cell = {(p["row"], p["benchmark"]): p for p in c["points"]}
    table = [[f"0 (base, {BASE_STYLE[row][0]})" if row in BASE_STYLE else row]
             + [f"{100 * x['pass@1']:.1f} ({100 * x['ci95'][0]:.0f}–{100 * x['ci95'][1]:.0f})"
                if (x := cell.get((row, b))) else "-" for b in benches] for row in rows]
    return [("p", f"`repro curve` (curve/curve.md): the student trained on nested subsets of the run's {c['pool']} "
                  "pairs, each evaluated on the same problems (" + ", ".join(f"{b} {n}" for b, n in c["benchmarks"].items())
                  + "); pass@1 in % with its 95% Wilson interval. " + c["conclusion"]),
            ("table", ["pairs"] + benches, table),
            figure_block("curve", curve_png(c), "pass@1 against training pairs (log axis); dashed lines and bands: "
                                                "the base student on each prompt, with its interval.")]
