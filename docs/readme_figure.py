"""Draw the README's figure from the committed ``features`` batch with the book's own plotting code.

Run from the repository root: ``python docs/readme_figure.py`` (``make readme-figure``). It writes
``_static/detection_by_split.png``, the same figure as the results chapter's detection plot.
"""

from pathlib import Path

from bkd_core.book import plots, results

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    import matplotlib

    matplotlib.use("Agg")
    plots.use_style()
    figure = plots.plot_detection_by_split(results.collect_results(ROOT / "reproductions" / "features"))
    out = ROOT / "_static" / "detection_by_split.png"
    figure.savefig(out, dpi=100, bbox_inches="tight")
    print(f"wrote {out}")
