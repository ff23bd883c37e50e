"""Draw the README's figure from the committed ``cnn`` batch (its finished runs) with the book's own plotting code.

Run from the repository root: ``python docs/readme_figure.py`` (``make readme-figure``). It writes
``_static/detection_by_split.png``, the results chapter's detection plot of the ``cnn`` batch; draw it again
when more of the batch's runs are committed.
"""

from pathlib import Path

from bkd_core.book import plots, results

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    import matplotlib

    matplotlib.use("Agg")
    plots.use_style()
    figure = plots.plot_detection_by_split(results.collect_results(ROOT / "reproductions" / "cnn"))
    out = ROOT / "_static" / "detection_by_split.png"
    figure.savefig(out, dpi=100, bbox_inches="tight")
    print(f"wrote {out}")
