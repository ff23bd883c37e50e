"""find_label_issues on the project's label-free CIFAR-10 features: detection quality of both masks, the
one-class diagnostic, and time, side by side with cleanlab's recipe on the same features.

Cases (each on 10,000 images, one CPU thread):

- ``test-clean``, ``test-sym-{10,20,40}``, ``test-pair-{10,20,40}``: the 10,000 CIFAR-10 test images (the
  features are fitted on the training images only) with their true labels, then with synthetic noise:
  symmetric (a label flipped to one of the 9 other classes at random) or class-dependent (flipped to the
  next class, ``(y + 1) mod 10``), at 10, 20 and 40%;
- ``n-{clean,aggre,rand1,rand2,rand3,worst}``: a random 10,000 (``--size``) of the training images (seed 0)
  with the CIFAR-10N label set.

For each: BKD's ``find_label_issues`` (default options, one training) gives F1 of the G4 mask and of the
below-threshold mask, the ranking AUC, the noise estimate and two one-class statistics of the scores
(``separation``, Ashman's D of the two Otsu classes, and the bimodality coefficient); cleanlab's recipe is
``cross_val_predict(LogisticRegression(max_iter=1000), X, y, cv=5, method="predict_proba")`` then
``cleanlab.filter.find_label_issues`` (F1, and AUC of ``cleanlab.rank.get_label_quality_scores``);
k-nearest-neighbour voting is ``bkd_core.detectors.knn.knn_label_issues`` (k = 10, cosine, no training;
the neighbour graph computed, not read from a cache). Each is timed on its own.

``--sweep`` times find_label_issues with the options that may buy speed (:data:`SWEEP`: batch size, hidden
width, epochs past the rule's window) over several seeds beside cleanlab's recipe, to see which keep detection.

``--speed`` instead times both on 10,000 and on all 50,000 training feature vectors (``worst`` labels),
interleaved (BKD, cleanlab, BKD, cleanlab, ...), and reports the medians and their ratio.

Every BLAS and torch pool is limited to ``--threads`` (default 1) threads.

Usage::

    BKD_DATA_DIR=... python benchmarks/bench_label_issues.py --out results.json [--cases test-sym-20 n-worst]
        [--no-cleanlab] [--no-knn] [--size 50000] [--markdown table.md]
    BKD_DATA_DIR=... python benchmarks/bench_label_issues.py --speed --out speed.json [--repeats 3]
    BKD_DATA_DIR=... python benchmarks/bench_label_issues.py --sweep --cases n-worst n-aggre test-sym-20
        --seeds 3 --out sweep.json --markdown sweep.md

Needs the CIFAR-10 images and CIFAR-N labels, and computes (once, cached) the patch features of the
60,000 images if they are not cached yet (about 5 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = [f"test-{kind}-{rate}" for kind in ("sym", "pair") for rate in (10, 20, 40)]
CIFAR10N = [f"n-{split}" for split in ("clean", "aggre", "rand1", "rand2", "rand3", "worst")]
CASES = ["test-clean", *SYNTHETIC, *CIFAR10N]


def case_data(name: str, size: int = 10_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features [n, 512] float32, given labels [n], is_noisy [n]) of a case."""
    from bkd_core.data import load_cifar_n
    from bkd_core.features import with_features

    split = name[2:] if name.startswith("n-") else "clean"
    data = with_features(load_cifar_n("cifar10", split), "patches", progress=False)
    if name.startswith("n-"):
        rows = np.sort(np.random.default_rng(0).permutation(len(data.train_labels))[:size])
        return data.train_features[rows], data.train_labels[rows].astype(np.int64), data.is_noisy[rows]
    x, clean = data.test_features[:size], data.test_labels[:size].astype(np.int64)
    given = clean.copy()
    if name != "test-clean":
        _, kind, rate = name.split("-")
        rng = np.random.default_rng(0)
        flip = rng.random(len(clean)) < int(rate) / 100
        step = rng.integers(1, 10, flip.sum()) if kind == "sym" else 1
        given[flip] = (clean[flip] + step) % 10
    return x, given, given != clean


def f1(flagged: np.ndarray, noisy: np.ndarray) -> float:
    tp = float((flagged & noisy).sum())
    return 2 * tp / max(float(flagged.sum() + noisy.sum()), 1.0)


def auc(quality: np.ndarray, noisy: np.ndarray) -> float:
    """P(a wrong label scores lower than a right one) (ties count half); NaN without both kinds."""
    if noisy.all() or not noisy.any():
        return float("nan")
    ranks = np.empty(len(quality))
    order = np.argsort(quality, kind="stable")
    sorted_q = quality[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_q, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    n_pos, n_neg = int(noisy.sum()), int((~noisy).sum())
    # Mann-Whitney with 0-based average ranks: pairs where the wrong label scores higher, subtracted
    return float(1.0 - (ranks[noisy].sum() - n_pos * (n_pos - 1) / 2) / (n_pos * n_neg))


def bimodality_coefficient(values: np.ndarray) -> float:
    """Sarle's bimodality coefficient (sample skewness and excess kurtosis); above 5/9 suggests two modes."""
    x = np.asarray(values, np.float64)
    n = len(x)
    d = x - x.mean()
    m2, m3, m4 = (d**2).mean(), (d**3).mean(), (d**4).mean()
    g1 = m3 / m2**1.5
    g2 = m4 / m2**2 - 3.0
    skew = g1 * np.sqrt(n * (n - 1)) / (n - 2)
    kurt = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * g2 + 6)
    return float((skew**2 + 1) / (kurt + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def run_bkd(x: np.ndarray, y: np.ndarray, noisy: np.ndarray, save: Path | None = None, **options) -> dict:
    """find_label_issues (seed 0 unless ``options`` say otherwise, keyword options as given) timed, with its F1s."""
    from bkd_core.label_issues import find_label_issues

    options = {"seed": 0, **options}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        res = find_label_issues(x, y, device="cpu", progress=False, **options)
    seconds = time.perf_counter() - start
    if save is not None:  # per-sample scores, to try other masks on them without training again
        np.savez_compressed(save, label_quality=res.label_quality, is_noisy=noisy, given=y)
    return {
        "bkd_seconds": round(seconds, 2), "bkd_epochs": len(res.epoch_statistic), "tipping_epoch": res.tipping_epoch,
        "tipping_rule": res.tipping_rule, "warnings": [str(w.message) for w in caught],
        "f1_g4": f1(res.g4, noisy), "f1_below": f1(res.below_threshold, noisy),
        "precision_g4": float((res.g4 & noisy).sum() / max(res.g4.sum(), 1)),
        "recall_g4": float((res.g4 & noisy).sum() / max(noisy.sum(), 1)),
        "precision_below": float((res.below_threshold & noisy).sum() / max(res.below_threshold.sum(), 1)),
        "recall_below": float((res.below_threshold & noisy).sum() / max(noisy.sum(), 1)),
        "auc_bkd": auc(res.label_quality.astype(np.float64), noisy), "estimate": res.estimated_noise_rate,
        "separation": res.separation, "bimodality": bimodality_coefficient(res.label_quality),
        "flag_g4_fraction": float(res.g4.mean()), "flag_below_fraction": float(res.below_threshold.mean()),
    }


def run_cleanlab(x: np.ndarray, y: np.ndarray, noisy: np.ndarray) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    start = time.perf_counter()
    probs = cross_val_predict(LogisticRegression(max_iter=1000), x, y, cv=5, method="predict_proba")
    issues = find_label_issues(y, probs)
    seconds = time.perf_counter() - start
    quality = get_label_quality_scores(y, probs)
    return {"cleanlab_seconds": round(seconds, 2), "f1_cleanlab": f1(issues, noisy),
            "auc_cleanlab": auc(quality, noisy)}


def run_knn(x: np.ndarray, y: np.ndarray, noisy: np.ndarray) -> dict:
    from bkd_core.detectors.knn import KNN_NEIGHBOURS, knn_label_issues

    start = time.perf_counter()
    res = knn_label_issues(x, y, k=KNN_NEIGHBOURS)
    seconds = time.perf_counter() - start
    return {"knn_seconds": round(seconds, 2), "f1_knn": f1(res.label_issues, noisy),
            "auc_knn": auc(res.label_quality.astype(np.float64), noisy)}


def speed(sizes: tuple[int, ...], repeats: int) -> list[dict]:
    """Median seconds of find_label_issues and of cleanlab's recipe on the same features, interleaved."""
    from bkd_core.data import load_cifar_n
    from bkd_core.features import with_features

    data = with_features(load_cifar_n("cifar10", "worst"), "patches", progress=False)
    warm = slice(0, 2000)  # first calls pay imports and allocator warm-up: not timed
    run_bkd(data.train_features[warm], data.train_labels[warm].astype(np.int64), data.is_noisy[warm])
    run_cleanlab(data.train_features[warm], data.train_labels[warm].astype(np.int64), data.is_noisy[warm])
    rows = []
    for size in sizes:
        keep = np.sort(np.random.default_rng(0).permutation(len(data.train_labels))[:size])
        x, y, noisy = data.train_features[keep], data.train_labels[keep].astype(np.int64), data.is_noisy[keep]
        bkd, clean = [], []
        for _ in range(repeats):
            bkd.append(run_bkd(x, y, noisy))
            clean.append(run_cleanlab(x, y, noisy))
        t_bkd = float(np.median([r["bkd_seconds"] for r in bkd]))
        t_cl = float(np.median([r["cleanlab_seconds"] for r in clean]))
        row = {"n": size, "d": x.shape[1], "repeats": repeats, "bkd_seconds": t_bkd, "cleanlab_seconds": t_cl,
               "bkd_all": [r["bkd_seconds"] for r in bkd], "cleanlab_all": [r["cleanlab_seconds"] for r in clean],
               "ratio": round(t_bkd / t_cl, 2), "bkd_epochs": bkd[0]["bkd_epochs"],
               "f1_g4": bkd[0]["f1_g4"], "f1_below": bkd[0]["f1_below"], "auc_bkd": bkd[0]["auc_bkd"],
               "f1_cleanlab": clean[0]["f1_cleanlab"], "auc_cleanlab": clean[0]["auc_cleanlab"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


#: ``--sweep``: find_label_issues options that may buy speed (name -> keyword options), the default first.
SWEEP = {
    "default": {},
    "batch 256": {"batch_size": 256},
    "batch 512": {"batch_size": 512},
    "hidden 512": {"widths": (512,)},
    "hidden 256": {"widths": (256,)},
    "window 1": {"tipping_window": 1},
}


def sweep(cases: list[str], seeds: int, size: int) -> list[dict]:
    """Each :data:`SWEEP` setting on each case (``size`` vectors), seeds 0..``seeds``-1, interleaved (every
    setting of one seed before the next seed), and cleanlab's recipe once per seed beside them: seconds, epochs,
    F1 of both masks and ranking AUC per run. Detection is lost when a setting's F1 falls outside the default's
    spread over the seeds."""
    warm = case_data(cases[0], size)
    run_bkd(warm[0][:2000], warm[1][:2000], warm[2][:2000])  # imports and allocator warm-up: not timed
    run_cleanlab(warm[0][:2000], warm[1][:2000], warm[2][:2000])
    rows = []
    for name in cases:
        x, y, noisy = case_data(name, size)
        for seed in range(seeds):
            for setting, options in SWEEP.items():
                row = {"case": name, "n": len(y), "seed": seed, "setting": setting,
                       **run_bkd(x, y, noisy, seed=seed, **options)}
                row.pop("warnings")
                rows.append(row)
                print(json.dumps(row), flush=True)
            row = {"case": name, "n": len(y), "seed": seed, "setting": "cleanlab recipe", **run_cleanlab(x, y, noisy)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def sweep_markdown(rows: list[dict]) -> str:
    """Per case and setting: median seconds (and its ratio to cleanlab's median), epochs, F1s and AUC as
    mean and range over the seeds."""
    lines = ["| case | setting | seconds (median) | / cleanlab | epochs | F1 below: mean (range) | F1 G4: mean (range) "
             "| AUC: mean (range) |", "|" + "---|" * 8]

    def spread(values, digits=1, scale=100):
        v = np.array(values, dtype=np.float64) * scale
        return f"{v.mean():.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})"

    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        cl = [r for r in mine if r["setting"] == "cleanlab recipe"]
        t_cl = float(np.median([r["cleanlab_seconds"] for r in cl]))
        lines.append(f"| {case} | cleanlab recipe | {t_cl:.1f} | 1.0 | | {spread([r['f1_cleanlab'] for r in cl])} | "
                     f"| {spread([r['auc_cleanlab'] for r in cl], 3, 1)} |")
        for setting in SWEEP:
            rs = [r for r in mine if r["setting"] == setting]
            t = float(np.median([r["bkd_seconds"] for r in rs]))
            lines.append(f"| {case} | {setting} | {t:.1f} | {t / t_cl:.1f} | "
                         f"{'/'.join(str(r['bkd_epochs']) for r in rs)} | {spread([r['f1_below'] for r in rs])} | "
                         f"{spread([r['f1_g4'] for r in rs])} | {spread([r['auc_bkd'] for r in rs], 3, 1)} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict]) -> str:
    head = ("| case | N | noise | BKD estimate | F1 G4 | F1 below | AUC BKD | F1 cleanlab | AUC cleanlab | F1 kNN "
            "| AUC kNN | separation | bimodality | BKD s | cleanlab s | kNN s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def pct(v):
        return "" if v is None or v != v else f"{100 * v:.1f}"

    def num(v, digits=2):
        return "" if v is None or v != v else f"{v:.{digits}f}"

    for r in rows:
        lines.append(f"| {r['case']} | {r['n']:,} | {pct(r['noise_rate'])} | {pct(r.get('estimate'))} "
                     f"| {pct(r.get('f1_g4'))} | {pct(r.get('f1_below'))} | {num(r.get('auc_bkd'), 3)} "
                     f"| {pct(r.get('f1_cleanlab'))} | {num(r.get('auc_cleanlab'), 3)} | {pct(r.get('f1_knn'))} "
                     f"| {num(r.get('auc_knn'), 3)} | {num(r.get('separation'))} | {num(r.get('bimodality'))} "
                     f"| {num(r.get('bkd_seconds'), 1)} | {num(r.get('cleanlab_seconds'), 1)} "
                     f"| {num(r.get('knn_seconds'), 1)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the results (rewritten per case)")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown")
    parser.add_argument("--no-cleanlab", action="store_true")
    parser.add_argument("--no-knn", action="store_true")
    parser.add_argument("--speed", action="store_true", help="time BKD and cleanlab on 10,000 and 50,000 vectors")
    parser.add_argument("--sweep", action="store_true", help="time find_label_issues options that may buy speed "
                        "(SWEEP) on --cases with --seeds seeds, beside cleanlab's recipe")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of --sweep")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-scores", type=Path, help="folder for each case's per-sample scores (.npz)")
    parser.add_argument("--size", type=int, default=10_000, help="training images of the n-* cases")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # the bkd_core of this checkout
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    torch.set_num_threads(args.threads)
    if args.speed:
        args.out.write_text(json.dumps(speed((10_000, 50_000), args.repeats), indent=1))
        return
    if args.sweep:
        rows = sweep(args.cases, args.seeds, args.size)
        args.out.write_text(json.dumps(rows, indent=1))
        if args.markdown:
            args.markdown.write_text(sweep_markdown(rows))
        return
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["case"], r["n"]) for r in rows}
    for name in args.cases:
        if (name, args.size if name.startswith("n-") else 10_000) in done:
            continue
        x, y, noisy = case_data(name, args.size)
        row = {"case": name, "n": len(y), "noise_rate": float(noisy.mean()), "threads": args.threads}
        save = None if args.save_scores is None else args.save_scores / f"{name}-{len(y)}.npz"
        row.update(run_bkd(x, y, noisy, save))
        if not args.no_cleanlab:
            row.update(run_cleanlab(x, y, noisy))
        if not args.no_knn:
            row.update(run_knn(x, y, noisy))
        rows.append(row)
        args.out.write_text(json.dumps(rows, indent=1))
        print(json.dumps(row), flush=True)
    if args.markdown:
        args.markdown.write_text(markdown(rows))


if __name__ == "__main__":
    main()
