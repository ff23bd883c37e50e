"""The browser check of the built book (``.ci/check_book.py``) on a tiny hand-made site.

A good page passes; a page with a missing image, a raw ``{glue:text}`` role, a traceback, a dead link
and a link to a missing anchor fails with one problem each; a chapter page whose finding or first figure starts
below the first screen (1000 px at 1280 px wide) fails. Skipped where Chromium is not installed
(CI installs it: ``.ci/run``).
"""

from __future__ import annotations

import importlib.util
import struct
import zlib
from pathlib import Path

import pytest

CHECKER = Path(__file__).resolve().parent.parent / ".ci" / "check_book.py"


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_book", CHECKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_book = _load_checker()
needs_chromium = pytest.mark.skipif(check_book.find_chromium() is None, reason="Chromium is not installed")


def _png(width: int = 4, height: int = 3) -> bytes:
    """A valid RGB PNG of the given size (grey pixels)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = b"".join(b"\0" + b"\x80" * (3 * width) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _page(title: str, body: str) -> str:
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>{body}</body></html>"


GOOD = _page("Intro", """
<h1 id="intro">Introduction</h1>
<p>The teacher memorizes 40.2% of wrong labels.</p>
<img src="_images/figure.png" alt="a figure">
<p>See <a href="chapters/two.html#results">the results</a>, <a href="#intro">the top</a>,
<a href="chapters/">the chapter folder</a> and <a href="https://example.invalid/x">an external page</a>.</p>
<div class="cell_output"><div class="output stream highlight-myst-ansi"><pre>epoch 1: loss 2.3</pre></div></div>
""")
TWO = _page("Two", """
<h1 id="results">Results</h1><p>BKD finds 68.0% of them.</p><a href="../index.html">home</a>
""")
BAD = _page("Broken", """
<h1>A broken chapter</h1>
<p>The noise rate is {glue:text}`worst_rate`.</p>
<img src="_images/missing.png" alt="gone">
<div class="cell_output"><div class="output traceback highlight-ipythontb"><pre>Traceback (most recent call last):
  File "x.py", line 1, in &lt;module&gt;
ZeroDivisionError: division by zero</pre></div></div>
<p><a href="chapters/nowhere.html">a dead link</a> and
<a href="chapters/two.html#no-such-section">a lost anchor</a>.</p>
""")


def _site(root: Path, *, bad: bool) -> Path:
    (root / "_images").mkdir(parents=True)
    (root / "_images" / "figure.png").write_bytes(_png())
    (root / "chapters").mkdir()
    (root / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=intro.html" />')  # as jupyter-book
    (root / "intro.html").write_text(GOOD)
    (root / "chapters" / "two.html").write_text(TWO)
    (root / "chapters" / "index.html").write_text(_page("Chapters", "<p>All chapters.</p>"))
    if bad:
        (root / "bad.html").write_text(BAD)
    return root


@needs_chromium
def test_a_good_site_passes(tmp_path):
    site = _site(tmp_path / "html", bad=False)
    assert check_book.check_site(site) == []
    assert check_book.main([str(site)]) == 0


@needs_chromium
def test_the_broken_page_fails_and_only_it(tmp_path, capsys):
    site = _site(tmp_path / "html", bad=True)
    problems = check_book.check_site(site)
    assert all(p.startswith("bad.html: ") for p in problems), problems
    text = "\n".join(problems)
    assert "image not drawn: _images/missing.png" in text
    assert "raw {glue role text" in text
    assert "a traceback is shown" in text and "error output" in text
    assert "dead link to chapters/nowhere.html" in text
    assert "link to a missing anchor: chapters/two.html#no-such-section" in text
    assert check_book.main([str(site)]) == 1
    assert "bad.html: dead link" in capsys.readouterr().out


@needs_chromium
def test_a_chapter_in_the_toc_must_be_built(tmp_path):
    site = _site(tmp_path / "html", bad=False)
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: index\nchapters:\n  - file: chapters/two\n  - file: chapters/three\n")
    assert check_book.check_site(site, toc=toc) == [
        "chapters/three.html: the table of contents lists it, but it was not built"]


@needs_chromium
def test_a_page_that_does_not_render_an_image_format_is_caught(tmp_path):
    site = _site(tmp_path / "html", bad=False)
    (site / "_images" / "figure.png").write_bytes(b"<html>not a png</html>")  # e.g. an error page saved as PNG
    assert check_book.check_site(site) == ["intro.html: image not drawn: _images/figure.png"]


@needs_chromium
def test_a_redirect_to_a_missing_page_is_a_dead_link(tmp_path):
    site = _site(tmp_path / "html", bad=False)
    (site / "intro.html").unlink()
    problems = check_book.check_site(site)
    assert "index.html: dead link to intro.html" in problems


def test_build_log_warnings_about_glue_and_citations(tmp_path):
    log = tmp_path / "build.log"
    log.write_text("\n".join([
        "reading sources... [100%] chapters/09_pixels",
        "\x1b[91m/b/chapters/05_otsu.ipynb:10004: WARNING: No key 'g4_f1' found in glue data for this document. "
        "[mystnb.glue]\x1b[39;49;00m",
        "/b/chapters/01_intro.ipynb:3: WARNING: could not find bibtex key \"kaiser2022\"",
        "/b/chapters/02.ipynb: WARNING: a harmless warning about something else",
        "build succeeded, 3 warnings.",
    ]))
    problems = check_book.log_problems(log)
    assert len(problems) == 2
    assert "No key 'g4_f1' found in glue" in problems[0] and "\x1b" not in problems[0]
    assert "kaiser2022" in problems[1]


def _chapter(spacer_px: int = 0, *, finding: bool = True, figure: bool = True) -> str:
    """A page laid out as MyST-NB lays out a chapter: the title, removed set-up cells, the finding (a cell tagged
    finding), then the figure's cell output, with ``spacer_px`` pixels of prose before them."""
    spacer = f'<div style="height:{spacer_px}px">set-up text</div>' if spacer_px else ""
    found = ('<div class="cell tag_remove-input tag_finding"><div class="cell_output"><p>BKD beats cleanlab on 4 '
             'of 5 splits.</p></div></div>') if finding else ""
    drawn = ('<div class="cell tag_remove-input"><div class="cell_output">'
             '<img src="../_images/figure.png" alt="the figure" style="width:600px;height:400px"></div></div>'
             if figure else "")
    later = '<div class="cell tag_hide-input"><div class="cell_input"><pre>book.table(summary)</pre></div></div>'
    return _page("Chapter", f"<h1>A chapter</h1>{spacer}{found}{drawn}<p>The rest of the chapter.</p>{later}")


@needs_chromium
def test_a_chapter_shows_its_finding_and_figure_in_the_first_screen(tmp_path):
    site = _site(tmp_path / "html", bad=False)
    (site / "chapters" / "first.html").write_text(_chapter())
    (site / "chapters" / "late.html").write_text(_chapter(spacer_px=1200))
    (site / "chapters" / "bare.html").write_text(_chapter(finding=False, figure=False))
    problems = check_book.check_site(site)
    late = [p for p in problems if p.startswith("chapters/late.html")]
    assert len(late) == 2 and all("below the first screen (1000 px at 1280 px wide)" in p for p in late), problems
    assert any("the finding (the cell tagged finding) starts at 1" in p for p in late)
    bare = sorted(p for p in problems if p.startswith("chapters/bare.html"))
    assert bare == ["chapters/bare.html: no figure on this chapter page",
                    "chapters/bare.html: no finding on this chapter page (tag its cell finding)"]
    assert not [p for p in problems if p.startswith("chapters/first.html")]
    # a taller first screen lets the late page pass
    assert not [p for p in check_book.check_site(site, first_screen=2000) if p.startswith("chapters/late.html")]


def test_first_screen_problems_only_on_chapter_pages():
    assert check_book.first_screen_problems({"notebook": False}) == []
    assert check_book.first_screen_problems({"notebook": True, "findingTop": 180, "figureTop": 420}) == []
    assert check_book.first_screen_problems({"notebook": True, "findingTop": 180, "figureTop": 1001}) == [
        "the first figure starts at 1001 px, below the first screen (1000 px at 1280 px wide)"]
