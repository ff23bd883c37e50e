"""The book: its configuration, the chapter notebooks, and each chapter run end to end.

* Static checks (instant): ``_config.yml``, ``_toc.yml``, the Pages workflow, and the shape every
  chapter must have (title, Colab cell, plain ``parameters`` cell, no stored outputs).
* Each chapter is executed with papermill and tiny parameters (a few seconds each; the training runs
  are shared through one run cache), and what it records is checked: every value its prose glues
  exists and is sane, figures are produced, nothing is printed, no error.
  With ``BKD_DATA_DIR`` set the chapters run on real CIFAR-10N; without it on the generated
  ``synthetic`` data, and the introduction (which reads the CIFAR-N label files) is skipped.
* With real data, the executed notebooks are built into HTML with jupyter-book (no re-execution) and
  the pages are checked: every chapter present, no stderr or error output, glue resolved,
  papermill's injected-parameters cell hidden.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")  # a book package: absent on a training-only machine
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
CHAPTER_DIR = ROOT / "chapters"
CHAPTERS = sorted(p.stem for p in CHAPTER_DIR.glob("*.ipynb"))
PARAMETERS = ["dataset", "split", "profile", "seed", "train_size", "epochs", "overrides"]
RESULTS_CHAPTER = "07_results"  # reads a reproduction batch; its parameters say which one
RESULTS_PARAMETERS = ["results_dir", "cnn_results_dir", "dataset", "gallery_split", "gallery_seed"]
REAL_DATA = bool(os.environ.get("BKD_DATA_DIR"))
COMMITTED_BATCH = ROOT / "reproductions" / "features"  # the results chapter's default batch
NEEDS_LABEL_FILES = {"01_intro"}
PIXELS_CHAPTER = "09_pixels"  # the end-to-end check on pixels: reads a committed cnn run, or retrains it
PIXELS_PARAMETERS = ["split", "seed", "retrain", "dataset", "train_size", "epochs", "overrides", "batch_dir"]
DEFAULT_PROFILE = {name: "features" for name in CHAPTERS if name != PIXELS_CHAPTER}

# Tiny runs: 300 images, 6 epochs, a narrow CNN (profile "cnn" at 8/16/16 channels whatever the chapter's default:
# the features profile would first extract the features of all 60,000 real images, minutes); the fallback forces
# the tipping point to epoch 3 (found after epoch 4), so phase 2 (epoch 5) and every detection path run.
TINY = {
    "dataset": "cifar10" if REAL_DATA else "synthetic",
    "profile": "cnn",
    "train_size": 300,
    "epochs": 6,
    "overrides": {"test_size": 200, "model_widths": [8, 16, 16], "tipping_fallback": 3},
}
# The pixels chapter with retrain=True on the same tiny runs (its cnn network, 8/16/16 channels, on 300 images):
# every path of a live run, in seconds; its default, reading the committed cnn runs, has tests of its own below.
PIXELS_TINY = {"retrain": True, **{k: v for k, v in TINY.items() if k != "profile"}}

GLUE_ROLE = re.compile(r"\{glue(?::text|:any|:md)?\}`([^`]+)`")
CONCLUSION_FIELD = re.compile(r"\{\w+(?::[^{}]*)?\}")  # a number of a conclusion: {name} or {name:.1f}


def _load_yaml(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


# ----------------------------------------------------------------------------------------------
# Static checks
# ----------------------------------------------------------------------------------------------


def test_config():
    config = _load_yaml("_config.yml")
    execute = config["execute"]
    assert execute["execute_notebooks"] in ("force", "cache")
    assert execute["raise_on_error"] is True and execute["allow_errors"] is False
    assert execute["timeout"] >= 1800  # a chapter's BKD run is one cell
    assert config["repository"]["branch"] == "main"
    assert config["repository"]["url"].startswith("https://github.com/")
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["html"]["use_repository_button"] and config["html"]["use_issues_button"]
    assert {"dollarmath", "amsmath"} <= set(config["parse"]["myst_enable_extensions"])
    assert {".venv", "runs", "reproductions", ".data", "_build", "benchmarks", "tests"} \
        <= set(config["exclude_patterns"])
    # the Pages address of the configured repository
    owner, name = config["repository"]["url"].removeprefix("https://github.com/").split("/")[:2]
    assert config["html"]["baseurl"] == f"https://{owner}.github.io/{name}/"
    from bkd_core.book.chapter import REPOSITORY_URL  # what Colab clones for the committed results

    assert REPOSITORY_URL == config["repository"]["url"]
    assert config["bibtex_bibfiles"] == ["references.bib"] and (ROOT / "references.bib").is_file()


def _cited_keys() -> set[str]:
    cited = set()
    for path in [*CHAPTER_DIR.glob("*.ipynb"), *CHAPTER_DIR.glob("*.md")]:
        for group in re.findall(r"\{cite(?::[pt])?\}`([^`]+)`", path.read_text()):
            cited |= {k.strip() for k in group.split(",")}
    return cited


def bibliography_problems(bib_text: str, cited: set[str]) -> list[str]:
    """What is wrong with a bibliography for the chapters' citations ``cited``: a citation without an entry, an
    entry no chapter cites (the book's bibliography would drop it), a key that is not plain ``name2022word``, or a
    name written with braces or a LaTeX command (the book's labels are built from the names, and a brace comes
    out mangled, as in "AJastrzkebskiB+17"): one line each."""
    import pybtex.database

    entries = pybtex.database.parse_string(bib_text, "bibtex").entries
    problems = [f"cited but not in references.bib: {key}" for key in sorted(cited - set(entries))]
    problems += [f"in references.bib but cited nowhere: {key}" for key in sorted(set(entries) - cited)]
    for key, entry in entries.items():
        if not re.fullmatch(r"[a-z]+\d{4}[a-z]+", key):
            problems.append(f"key {key!r} is not of the form name2022word")
        for role, people in entry.persons.items():
            for person in people:
                if re.search(r"[{}\\]", str(person)):
                    problems.append(f"{key}: {role} {str(person)!r} holds a brace or a LaTeX command: write the name "
                                    "in Unicode")
    return problems


def test_citations_resolve_to_bibliography_entries():
    """Every {cite} key of the chapters is in references.bib, every entry is cited, and no name holds a brace."""
    cited = _cited_keys()
    assert bibliography_problems((ROOT / "references.bib").read_text(), cited) == []
    assert {"kaiser2022blind", "otsu1979threshold", "northcutt2021confident", "hinton2015distilling",
            "wei2022learning", "arpit2017closer", "zhang2017understanding", "li2020dividemix", "xiao2023promix",
            "liu2020early", "liu2022robust", "han2018coteaching", "coates2011analysis"} <= cited


def test_the_bibliography_check_fails_on_what_it_must():
    good = "@article{otsu1979threshold, author = {Otsu, Nobuyuki}, title = {T}, year = {1979}}\n"
    assert bibliography_problems(good, {"otsu1979threshold"}) == []
    braced = good.replace("Otsu, Nobuyuki", "Jastrz{\\k{e}}bski, Stanis{\\l}aw")
    assert any("holds a brace" in p for p in bibliography_problems(braced, {"otsu1979threshold"}))
    assert bibliography_problems(good, {"otsu1979threshold", "li2020dividemix"}) == [
        "cited but not in references.bib: li2020dividemix"]
    assert bibliography_problems(good, set()) == ["in references.bib but cited nowhere: otsu1979threshold"]
    assert any("not of the form" in p for p in bibliography_problems(good.replace("otsu1979threshold", "Otsu_79"),
                                                                      {"Otsu_79"}))


def test_toc_lists_every_chapter_in_four_parts():
    toc = _load_yaml("_toc.yml")
    assert toc["format"] == "jb-book"
    assert [part["caption"] for part in toc["parts"]] == ["Background", "Method", "Results", "Appendix"]
    files = [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    assert files[-1] == "chapters/bibliography" and (ROOT / "chapters" / "bibliography.md").is_file()
    assert sorted(files[:-1]) == [f"chapters/{name}" for name in CHAPTERS]
    assert len(CHAPTERS) == 9
    assert files[-3:] == ["chapters/08_differences", f"chapters/{PIXELS_CHAPTER}", "chapters/bibliography"]


def test_pages_workflow():
    text = (ROOT / ".github" / "workflows" / "book.yml").read_text()
    workflow = yaml.safe_load(text)
    assert "build" in workflow["jobs"] and "deploy" in workflow["jobs"]
    for needle in ("actions/upload-pages-artifact", "actions/deploy-pages", "python -m bkd_core data",
                   "make book", "_build/html"):
        assert needle in text, needle
    assert "jupyter-book build . --builder html" in (ROOT / "Makefile").read_text()
    # PRs build without deploying; least privilege: Pages rights only on the deploy job
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    assert "pull_request" in triggers and "push" in triggers
    assert workflow["permissions"] == {"contents": "read"}
    deploy = workflow["jobs"]["deploy"]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert "pull_request" in deploy["if"] and "permissions" not in workflow["jobs"]["build"]
    steps = workflow["jobs"]["build"]["steps"]
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["cache"] == "pip"
    # every download goes through bkd_core's validated downloads
    assert "urlretrieve" not in text


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_shape(name):
    nb = nbformat.read(CHAPTER_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "outputs stored"
    # first code cell: Colab set-up, removed from the HTML, one short cell that installs bkd_core from the
    # configured repository and calls the package (bkd_core.book.setup_colab), which fetches the data the chapter
    # needs and says where its runs go
    colab = code[0]
    assert "remove-cell" in colab.metadata.get("tags", [])
    assert 'if "google.colab" in sys.modules:' in colab.source and len(colab.source.splitlines()) <= 8
    url = _load_yaml("_config.yml")["repository"]["url"]
    assert f"git+{url}" in colab.source
    assert "book.setup_colab(" in colab.source and 'images=["cifar10"]' in colab.source
    if name in NEEDS_LABEL_FILES:
        assert 'labels=["cifar100"]' in colab.source  # the noise rates of CIFAR-100N too
    if name == RESULTS_CHAPTER:
        assert "trains=False" in colab.source and "results=True" in colab.source  # clones the committed batches
    elif name == PIXELS_CHAPTER:  # reads the committed runs, or trains them
        assert "results=True" in colab.source and "keep_runs_on_drive=KEEP_RUNS_ON_DRIVE" in colab.source
    else:
        assert "keep_runs_on_drive=KEEP_RUNS_ON_DRIVE" in colab.source
    # a chapter that trains with the features profile says that the first run computes them, and where they go
    trains_features = DEFAULT_PROFILE.get(name) == "features" and name not in NEEDS_LABEL_FILES | {RESULTS_CHAPTER}
    assert ("features=True" in colab.source) == trains_features
    # second code cell: papermill parameters, plain literals only, each with a type annotation that
    # papermill --help-notebook shows (its pattern takes names, brackets and commas: no "int | None")
    params = code[1]
    assert params.metadata.get("tags") == ["parameters", "remove-cell"]  # the notebook's, not the page's
    names, defaults = [], {}
    for stmt in ast.parse(params.source).body:
        assert isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value, ast.dump(stmt)
        annotation = ast.unparse(stmt.annotation)
        assert re.fullmatch(r"""['"]?\w[\w\[\],\s]*['"]?""", annotation), annotation
        names.append(stmt.target.id)
        defaults[stmt.target.id] = ast.literal_eval(stmt.value)
    import papermill

    inferred = {k: v["inferred_type_name"]
                for k, v in papermill.inspect_notebook(str(CHAPTER_DIR / f"{name}.ipynb")).items()}
    assert list(inferred) == names and "None" not in inferred.values(), inferred
    if name == RESULTS_CHAPTER:
        assert names == RESULTS_PARAMETERS
        # the committed batches, found from any directory
        assert defaults["results_dir"] == "reproductions/features"
        assert defaults["cnn_results_dir"] == "reproductions/cnn"
    elif name == PIXELS_CHAPTER:
        assert names == PIXELS_PARAMETERS
        # by default it trains nothing: it reads the committed cnn batch; the retired cpu profile is gone from it
        assert defaults["retrain"] is False and defaults["batch_dir"] == "reproductions/cnn"
        assert defaults["split"] == "worst" and defaults["seed"] == 0 and defaults["epochs"] is None
        text = "\n".join(c.source for c in nb.cells)
        assert not re.search(r"[\"`']cpu[\"`']|profile=\"cpu|cpu profile", text), "the cpu profile is still named"
        assert "2.4 hours" in text and "GPU" in text  # what retraining costs
    else:
        assert names == PARAMETERS
        assert defaults["profile"] == DEFAULT_PROFILE[name]
        assert defaults["epochs"] is None and defaults["train_size"] is None  # the profile's values
        # every chapter's parameter help names the profiles (chapter 01: the book's three, paper, cnn and features)
        help_text = papermill.inspect_notebook(str(CHAPTER_DIR / f"{name}.ipynb"))["profile"]["help"]
        assert all(f'"{p}"' in help_text for p in ("paper", "cnn", "features")), help_text
        assert '"cpu"' not in help_text, help_text
    if name in ("01_intro", RESULTS_CHAPTER):  # the retired cpu profile is gone (the device "cpu" is another thing)
        text = "\n".join(c.source for c in nb.cells)
        assert not re.search(r"reproductions/cpu|`cpu`|[\"']cpu[\"']\s*:|cpu[ _](profile|results|summary|batch)",
                             text), "the cpu profile is still named"
    # each conclusion written once: a code cell whose Markdown output is the sentence with its numbers (shown in
    # the book, Colab and papermill alike), with no copy in the prose
    prose = " ".join(" ".join(c.source.split()) for c in nb.cells if c.cell_type == "markdown")
    shown = [c for c in code if "book.conclusion(" in c.source]
    assert shown, "the chapter states no conclusion"
    for cell in shown:
        tags = cell.metadata.get("tags", [])
        assert "remove-input" in tags and "remove-cell" not in tags, cell.source[:80]
        for text in _conclusion_texts(cell.source):
            assert CONCLUSION_FIELD.search(text) and "{glue" not in text, text[:80]
            for paragraph in text.split("\n\n"):
                assert " ".join(paragraph.split()) not in prose, f"written twice: {paragraph[:80]}"
    _check_first_screen(nb)
    # no hard-coded repository address elsewhere, no leftover debugging
    for cell in code[1:]:
        assert "github.com/" not in cell.source
        assert not re.search(r"^\s*print\(", cell.source, re.M), f"print in {name}: {cell.source[:80]}"


def _check_first_screen(nb) -> None:
    """The finding and the main figure open the page: one code cell tagged ``finding`` states a conclusion, only
    the title comes before it in the page (every code cell before it is removed from the HTML, no prose between),
    and the next cell draws the main figure with its code removed."""
    cells = nb.cells
    findings = [i for i, c in enumerate(cells) if "finding" in c.metadata.get("tags", [])]
    assert len(findings) == 1, f"one cell tagged finding, got {len(findings)}"
    k = findings[0]
    assert cells[k].cell_type == "code" and "book.conclusion(" in cells[k].source
    assert "remove-input" in cells[k].metadata["tags"]
    for cell in cells[1:k]:
        assert cell.cell_type == "code" and "remove-cell" in cell.metadata.get("tags", []), (
            f"shown before the finding: {cell.source[:80]}")
    figure = cells[k + 1]
    assert figure.cell_type == "code" and "fig = plots." in figure.source, figure.source[:80]
    assert figure.metadata.get("tags") == ["remove-input"]


def _conclusion_calls(source: str) -> list[tuple[str, set[str]]]:
    """The ``book.conclusion(...)`` calls in a cell: each one's text and the names of the values passed to it."""
    return [(ast.literal_eval(node.args[0]), {keyword.arg for keyword in node.keywords})
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "book.conclusion"]


def _conclusion_texts(source: str) -> list[str]:
    """The texts of the ``book.conclusion(...)`` calls in a cell."""
    return [text for text, _ in _conclusion_calls(source)]


# ----------------------------------------------------------------------------------------------
# Execution with papermill
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run chapters on demand (once each) into one folder, sharing one run cache."""
    import papermill as pm

    out = tmp_path_factory.mktemp("book")
    (out / "chapters").mkdir()
    cache = out / "runs"
    results: dict[str, Path | BaseException] = {}
    # the kernels inherit the environment: one thread each, as the rest of the suite (conftest.py), and the
    # run cache (a chapter reads $BKD_RUN_CACHE)
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "BKD_RUN_CACHE")}
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["BKD_RUN_CACHE"] = str(cache)

    def run(name: str) -> Path:
        if name not in results:
            path = out / "chapters" / f"{name}.ipynb"
            try:
                if name == RESULTS_CHAPTER:
                    parameters = _results_parameters(out / "batch")
                elif name == PIXELS_CHAPTER:
                    parameters = {**PIXELS_TINY, "overrides": json.dumps(PIXELS_TINY["overrides"])}
                else:
                    # overrides as JSON text, as `papermill -p overrides '{...}'` passes them
                    parameters = {**TINY, "overrides": json.dumps(TINY["overrides"])}
                pm.execute_notebook(CHAPTER_DIR / f"{name}.ipynb", path, cwd=CHAPTER_DIR, kernel_name="python3",
                                    progress_bar=False, parameters=parameters)
                results[name] = path
            except BaseException as exc:  # noqa: BLE001 - re-raised for every test that needs it
                results[name] = exc
        if isinstance(results[name], BaseException):
            raise results[name]
        return results[name]

    run.folder = out  # type: ignore[attr-defined]
    yield run
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _results_parameters(folder: Path) -> dict:
    """The results chapter reads the committed features batch when it and the real data are here; otherwise a
    two-seed batch of tiny runs on the synthetic stand-in, made here in process."""
    if REAL_DATA and (COMMITTED_BATCH / "summary.json").is_file():
        return {"results_dir": str(COMMITTED_BATCH)}
    from bkd_core import book
    from bkd_core.batch import runner as reproduce

    data = book.load_data("synthetic")
    overrides = {"train_size": 300, "epochs": 4, "test_size": 100, "model_widths": (8, 16, 16), "tipping_fallback": 1}
    for seed in (0, 1):
        reproduce.run_one("cifar10", "synthetic", seed, folder / f"cifar10-synthetic-seed{seed}", profile="cnn",
                          overrides=overrides, folds=2, progress=False, loader=lambda *args, **kwargs: data)
    outcomes = [reproduce.RunOutcome(f"cifar10-synthetic-seed{seed}", "done", 1.0) for seed in (0, 1)]
    outcomes.append(reproduce.RunOutcome("cifar100-noisy100-seed0", "skipped", reason="cifar100 data not found"))
    reproduce.write_batch_summary(folder, outcomes,
                                  reproduce.BatchOptions(out=str(folder), profile="cnn", overrides=overrides,
                                                         folds=2))
    return {"results_dir": str(folder), "dataset": "synthetic",
            "gallery_split": "synthetic"}


def _glued(nb) -> dict:
    values = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get("scrapbook")
            if meta:
                text = output["data"][meta["mime_prefix"] + "text/plain"]
                try:
                    values[meta["name"]] = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    values[meta["name"]] = text
    return values


def _check_outputs(nb) -> int:
    """No errors, no printed output (stderr only in cells tagged remove-stderr), no bare text repr as a
    cell's result; returns the figure count."""
    figures = 0
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        for output in cell.get("outputs", []):
            assert output.output_type != "error", output
            if output.output_type == "stream":
                hidden = "remove-stderr" in tags or "remove-cell" in tags  # a progress bar, not in the page
                assert output.name == "stderr" and hidden, (cell.source[:80], output.text[:300])
            if output.output_type == "execute_result":  # a bare repr such as Text(...) left on the page
                assert set(output["data"]) - {"text/plain"}, (cell.source[-80:], output["data"]["text/plain"][:200])
            if "image/png" in output.get("data", {}):
                figures += 1
    return figures


EXPECTED = {  # chapter -> (glued keys to check, minimum number of figures)
    "01_intro": ({"worst_rate", "aggre_rate", "top_pct", "worst_class", "profile_name", "setup_text", "claims_box"}, 4),
    "02_memorization": ({"n_train", "noise_pct", "p_noisy_last", "mem_noisy_last", "peak_acc", "verdict"}, 1),
    "03_blind_teacher": ({"t_mem", "s_mem", "t_noisy", "s_noisy", "verdict"}, 3),
    "04_tipping_point": ({"tip_sentence", "prominence_text", "onset_text", "vs_onset", "w_range_text"}, 2),
    "05_otsu": ({"t_bkd", "t_classic", "est_bkd", "true_rate", "g4_f1", "below_f1", "all_f1"}, 3),
    "06_robust_training": ({"g1_dog", "g4_dog", "bkd_last", "ce_last", "bkd_f1", "phase2_text", "blindness_text"}, 2),
    "07_results": ({"code_text", "n_runs", "floor_text", "cleanlab_text", "below_text", "acc_text", "peak_text",
                    "top_noisy", "paper_pflop", "floor_sentence", "auc_bkd", "auc_cl_verdict", "cfg_setup",
                    "cnn_finding_text"}, 6),
    "08_differences": ({"q3_ratio", "q8_train_f1", "q8_val_f1", "q10_g4", "q10_g34", "q11_t_bkd", "q11_t_classic",
                        "groups_text"}, 2),
    "09_pixels": ({"setup_text", "source_text", "memo_text", "tip_text", "otsu_text", "acc_text", "story",
                   "proxy_text"}, 2),
}


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_runs(name, executed):
    if name in NEEDS_LABEL_FILES and not REAL_DATA:
        pytest.skip("needs the CIFAR-N label files: set BKD_DATA_DIR (see README)")
    nb = nbformat.read(executed(name), as_version=4)
    glued = _glued(nb)
    # every value the prose refers to was glued (a chapter may quote its numbers in its conclusions alone)
    referenced = {m.split(":")[0] for c in nb.cells if c.cell_type == "markdown" for m in GLUE_ROLE.findall(c.source)}
    assert referenced <= set(glued), f"not glued: {sorted(referenced - set(glued))}"
    # the conclusions are shown with their numbers (Markdown outputs): each is its text filled in with the glued
    # values and the values passed to book.conclusion, which it records in the output's metadata
    from bkd_core.book import CONCLUSION_METADATA, render_conclusion

    passed = {}
    conclusions = 0
    for cell in nb.cells:
        if cell.cell_type == "code" and "book.conclusion(" in cell.source:
            shown = [o for o in cell.outputs if "text/markdown" in o.get("data", {})]
            calls = _conclusion_calls(cell.source)
            assert len(shown) == len(calls), cell.source[:120]
            for output, (text, names) in zip(shown, calls):
                values = output.get("metadata", {}).get(CONCLUSION_METADATA, {}).get("values", {})
                assert set(values) == names, (sorted(values), sorted(names))  # every value passed is recorded
                assert not names & set(glued), f"glued and passed: {sorted(names & set(glued))}"  # one source each
                rendered = output["data"]["text/markdown"]
                assert rendered == render_conclusion(text, {**glued, **values}), cell.source[:120]
                assert not CONCLUSION_FIELD.search(rendered) and re.search(r"\d", rendered), rendered[:200]
                passed.update(values)
            conclusions += len(shown)
    assert conclusions
    values = {**glued, **passed}  # every number the chapter states
    keys, min_figures = EXPECTED[name]
    assert keys <= set(values), sorted(keys - set(values))
    assert _check_outputs(nb) >= min_figures
    for key, value in values.items():
        if isinstance(value, float) and not key.startswith("q6_"):
            assert value == value, f"{key} is NaN"  # noqa: PLR0124
    if name == "01_intro" and REAL_DATA:
        assert abs(values["worst_rate"] - 40.21) < 0.01 and abs(values["aggre_rate"] - 9.01) < 0.01
    if name == "05_otsu":
        assert 0 < values["t_bkd"] < 1 and 0 <= values["g4_f1"] <= 1
        assert abs(values["all_f1"] - 2 * values["true_rate"] / 100 / (1 + values["true_rate"] / 100)) < 1e-9
    if name == PIXELS_CHAPTER:  # retrained here (PIXELS_TINY): both runs, every section filled in
        assert values["story"].startswith("On pixels, in the run trained here")
        assert "cross-entropy at" in values["story"]
        assert "airbench-class CNNs (8/16/16 channels after a fixed whitening layer) on the pixels of a random " \
               "300-image subset" in values["setup_text"]
        assert values["source_text"].startswith("Both runs were trained live for this page")
        assert "Cross-entropy ends at" in values["acc_text"] and "cross-entropy baseline fits" in values["memo_text"]
    if name == "06_robust_training" and (ROOT / "reproductions" / "features-nonblind" / "summary.json").is_file():
        # the committed students that see the label, this profile's or the features profile's, set beside BKD's
        assert "BKD's blind student against the one that sees the label" in values["blindness_text"]
    if name == "08_differences":
        if (ROOT / "reproductions" / "cnn-noaug" / "summary.json").is_file():  # both cnn batches, side by side
            assert values["augment_text"].startswith("One seed each, so no verdict"), values["augment_text"][:200]
        b, c = values["q3_B"], values["q3_C"]
        assert abs(values["q3_ratio"] - b * (c - 1) / (b * c - 1)) < 1e-12


def test_injected_parameters_are_hidden(tmp_path):
    from bkd_core.book import hide_injected_parameters

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("x = 2", metadata={"tags": ["injected-parameters"]})]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert hide_injected_parameters(path) == 1
    assert hide_injected_parameters(path) == 0
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].metadata["tags"] == ["parameters"]
    assert cells[1].metadata["tags"] == ["injected-parameters", "remove-cell"]


@pytest.mark.skipif(not REAL_DATA, reason="builds every chapter, and the introduction needs BKD_DATA_DIR")
def test_book_builds_from_executed_chapters(executed):
    """jupyter-book turns the papermill outputs into HTML (execution off) without warnings."""
    from bkd_core.book import hide_injected_parameters

    for name in CHAPTERS:
        hide_injected_parameters(executed(name))
    book = executed.folder
    config = _load_yaml("_config.yml")
    config["execute"]["execute_notebooks"] = "off"
    (book / "_config.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ROOT / "_toc.yml", book / "_toc.yml")
    shutil.copy(ROOT / "references.bib", book / "references.bib")
    for page in CHAPTER_DIR.glob("*.md"):  # the bibliography
        shutil.copy(page, book / "chapters" / page.name)
    if (ROOT / "_static").is_dir():
        shutil.copytree(ROOT / "_static", book / "_static")
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(jb), "build", str(book), "--builder", "html", "-W", "-n", "--keep-going"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in CHAPTERS:
        html = (book / "_build" / "html" / "chapters" / f"{name}.html").read_text()
        assert "output stderr" not in html and "output traceback" not in html, name
        assert "{glue" not in html, name
        assert "Traceback" not in html, name
        assert "tag_injected-parameters" not in html, name  # papermill's injected parameters: removed
        assert "google.colab" not in html, name  # the Colab cell is removed
    index = json.dumps(sorted(p.name for p in (book / "_build" / "html").iterdir()))
    assert "index.html" in index


@pytest.mark.skipif(not (REAL_DATA and (COMMITTED_BATCH / "summary.json").is_file()),
                    reason="reads the committed batches and their images: set BKD_DATA_DIR")
def _execute_one_thread(pm, notebook: Path, out: Path, *, cwd: Path, parameters: dict | None = None) -> None:
    """papermill runs ``notebook`` into ``out`` from ``cwd`` with a one-thread kernel, as a user's papermill would."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        pm.execute_notebook(notebook, out, cwd=cwd, kernel_name="python3", progress_bar=False,
                            parameters=parameters or {})
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def test_results_chapter_runs_from_any_directory(tmp_path):
    """papermill from another working directory, default parameters: the committed batch is found
    (relative to the repository), and the conclusions are shown with their numbers."""
    import papermill as pm

    out = tmp_path / "07.ipynb"
    _execute_one_thread(pm, CHAPTER_DIR / f"{RESULTS_CHAPTER}.ipynb", out, cwd=tmp_path)
    nb = nbformat.read(out, as_version=4)
    glued = _glued(nb)
    assert glued["n_runs"] == 18 and glued["profile"] == "features"
    assert glued["cnn_finding_text"].startswith("on worst, BKD's G4 F1")  # the cnn batch: noisiest split first
    shown = " ".join(o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if "text/markdown" in o.get("data", {}))
    assert re.search(r"Code version: 18 of 18 ", shown), shown[:500]
    # every comparison by book.verdict's rule: ties and losses said as wins are, with their numbers
    assert re.search(r"On the 5 noisy splits, BKD's G4 mask \(its official output\) against flagging\s+everything "
                     r"beats on 5", shown), shown[:800]
    assert "loses on 1 (worst: 68.0 against 73.2)" in shown  # confident learning's F1 on worst
    assert "ties on 1 (aggre: 76.2 against 76.0) and loses on 1 (clean: 76.9 against 78.6)" in shown  # accuracy


COMMITTED_CNN_BATCH = ROOT / "reproductions" / "cnn"
CNN_WORST = "cifar10-worst-seed0"


def _cnn_batch(folder: Path, state: str) -> str:
    """A batch folder in one of the states the pixels chapter must build on, from the committed BKD stage of worst:
    nothing committed, BKD alone, BKD with a cross-entropy stage (written by hand: 40 epochs of curves)."""
    folder.mkdir()
    if state == "nothing":
        return str(folder)
    shutil.copytree(COMMITTED_CNN_BATCH / CNN_WORST / "bkd", folder / CNN_WORST / "bkd")
    if state == "bkd and ce":
        ce = folder / CNN_WORST / "ce"
        ce.mkdir()
        shutil.copy(folder / CNN_WORST / "bkd" / "config.json", ce / "config.json")
        epochs = [float(e) for e in range(1, 41)]
        fit = [0.1 + 0.02 * e for e in range(40)]  # memorizes: 10 points above its low by epoch 6
        (ce / "curves.json").write_text(json.dumps({"epoch": epochs, "fit_mislabelled": fit, "fit_clean": [0.9] * 40,
                                                    "test_acc": [70.0 - e / 4 for e in epochs]}))
        (ce / "metrics.json").write_text(json.dumps({"kind": "ce", "test_acc": 60.0, "best_test_acc": 69.75,
                                                     "wall_time_s": 3600.0, "true_noise_rate": 0.40208}))
    return str(folder)


@pytest.mark.skipif(not (COMMITTED_CNN_BATCH / CNN_WORST / "bkd" / "metrics.json").is_file(),
                    reason="reads the committed BKD stage of the cnn batch on worst")
@pytest.mark.parametrize("state", ["committed", "nothing", "bkd", "bkd and ce"])
def test_the_pixels_chapter_builds_on_every_state_of_the_cnn_batch(tmp_path, state):
    """Default parameters (no training), from another working directory: the committed batch as it is, and a batch
    with nothing, with BKD alone, with BKD and cross-entropy. A missing stage is a sentence, never an error; figures
    appear with BKD's stage; no NaN, nothing printed."""
    import papermill as pm

    parameters = {} if state == "committed" else {"batch_dir": _cnn_batch(tmp_path / "cnn", state)}
    out = tmp_path / "09.ipynb"
    _execute_one_thread(pm, CHAPTER_DIR / f"{PIXELS_CHAPTER}.ipynb", out, cwd=tmp_path, parameters=parameters)
    nb = nbformat.read(out, as_version=4)
    figures = _check_outputs(nb)
    assert not any(o.output_type == "stream" for c in nb.cells for o in c.get("outputs", []))  # nothing trained
    from bkd_core.book import CONCLUSION_METADATA

    values = _glued(nb)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            values.update(output.get("metadata", {}).get(CONCLUSION_METADATA, {}).get("values", {}))
    shown = " ".join(str(v) for v in values.values())
    assert "nan" not in shown.lower().split() and "None" not in shown
    story = values["story"]
    if state == "nothing":
        assert figures == 0 and "not here yet: the batch is still running" in story
        assert "committed so far: none" in story
        return
    assert figures == 2  # the run's story and the histogram at its tipping epoch
    assert story.startswith("On pixels, in the committed run cifar10-worst-seed0, the official peak rule sets the "
                            "tipping point at epoch 26 (seen at epoch 28)")
    assert "49.4% noise against the true 40.2%" in story and "F1 0.767 against 0.574" in story
    assert "The features proxy" in values["proxy_text"]
    if state == "bkd":
        assert "the run's cross-entropy is not here yet: the batch is still running" in story
        assert "not here yet" in values["memo_text"] and "not here yet" in values["acc_text"]
        assert values["acc_text"].startswith("In the right panel of the figure at the top, BKD's test accuracy is "
                                             "79.4% at the tipping epoch; phase 2 starts at epoch 29")
    if state == "bkd and ce":
        assert "cross-entropy at 60.0% (+18.6 points)" in story
        assert "takes off at epoch 6" in values["memo_text"] and "BKD ends 18.6 points above it" in values["acc_text"]
    html = " ".join(o["data"].get("text/html", "") for c in nb.cells for o in c.get("outputs", []) if "data" in o)
    assert "same story?" in html  # the proxy check's table
