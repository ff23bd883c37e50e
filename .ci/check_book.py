#!/usr/bin/env python3
"""Open every page of the built book in headless Chromium and fail on what a reader would see broken.

    python .ci/check_book.py _build/html [--toc _toc.yml] [--log build.log] [--chromium /usr/bin/chromium]

For each HTML page (``_static`` and ``_sources`` left out) it checks that

* the page loads (no navigation error, the load event fires, the page has text);
* every image is drawn (``complete`` and ``naturalWidth > 0``);
* no raw ``{glue`` or ``{cite`` role text is left in the page;
* no error output: no traceback, error or docutils system-message block, no "Traceback (most recent
  call last)" in the text;
* every internal link resolves: the file exists and, for ``page.html#anchor``, the anchor is an id on
  that page;
* a chapter page (one with notebook cells) opens with its finding and its main figure: at the desktop size of
  1280 x 1000 pixels, the cell tagged ``finding`` and the first figure of a cell's output start within the first
  screen (``--first-screen``, 1000 px from the top of the page).

With ``--toc``, every chapter listed in the jupyter-book table of contents must have a built page. With
``--log``, the build's warnings about a glued value, a role or a citation that was not found fail too (they
leave nothing in the HTML to see).
Exit status 0 when all is well, 1 with one line per problem otherwise, 2 when Chromium cannot be run.
Chromium is driven through its DevTools protocol over a pipe (``--remote-debugging-pipe``): no network
port, no extra Python package. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--remote-debugging-pipe")
#: Seconds to wait for one page's load event (an offline machine fails CDN scripts quickly).
LOAD_TIMEOUT = 60.0
SKIPPED_FOLDERS = ("_static", "_sources", "_images")

#: The desktop viewport every page is laid out in (CSS pixels), and how far down the finding and the first
#: figure of a chapter may start: the first screen.
VIEWPORT = {"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": False}
FIRST_SCREEN = 1000

#: Runs in the page after its load event; returns what the checks need as JSON.
PAGE_PROBE = r"""
(async () => {
  const images = Array.from(document.images);
  images.forEach(img => { img.loading = "eager"; });
  await Promise.all(images.map(img => img.decode().catch(() => null)));
  const text = document.body ? document.body.innerText : "";
  // where an element starts, in CSS pixels from the top of the page (null: no such element)
  const top = el => el === null ? null : Math.round(el.getBoundingClientRect().top + window.scrollY);
  const errorBlocks = Array.from(document.querySelectorAll(
      ".output.traceback, .highlight-ipythontb, .output.error, .output_error, div.system-message, .system-message"))
    .map(el => el.innerText.trim().slice(0, 160));
  const stderrErrors = Array.from(document.querySelectorAll(".output.stderr, .output_stderr"))
    .map(el => el.innerText).filter(t => /\b\w*(Error|Exception)\b|Traceback/.test(t))
    .map(t => t.trim().slice(0, 160));
  return JSON.stringify({
    title: document.title,
    textLength: text.trim().length,
    text: text,
    brokenImages: images.filter(img => !(img.complete && img.naturalWidth > 0))
                        .map(img => img.getAttribute("src") || "(no src)"),
    errorBlocks: errorBlocks.concat(stderrErrors),
    links: Array.from(document.querySelectorAll("a[href]")).map(a => a.href),
    ids: Array.from(document.querySelectorAll("[id], a[name]")).map(el => el.id || el.getAttribute("name")),
    notebook: document.querySelector("div.cell") !== null,
    findingTop: top(document.querySelector(".tag_finding")),
    figureTop: top(document.querySelector(".cell_output img")),
  });
})()
"""


class ChromiumError(RuntimeError):
    """Chromium could not be started, or stopped answering."""


def _renumber_above(fd: int, lowest: int) -> int:
    """``fd`` moved to the lowest free number >= ``lowest`` (the old number is closed)."""
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return moved


class Chromium:
    """A headless Chromium driven over ``--remote-debugging-pipe`` (NUL-separated JSON on fds 3 and 4)."""

    def __init__(self, executable: str, timeout: float = LOAD_TIMEOUT):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="check_book_chromium_")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # the child's ends get numbers above 4, so that moving them to 3 and 4 cannot overwrite one another
        to_child_r, from_child_w = (_renumber_above(fd, 10) for fd in (to_child_r, from_child_w))
        # bash moves the pipe ends to fds 3 and 4, where Chromium expects them, then execs it
        script = f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w} {to_child_r}<&- {from_child_w}>&-'
        args = [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        try:
            self.process = subprocess.Popen(["bash", "-c", script, executable, *args],
                                            pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    # -- protocol ----------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self._from_child], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise ChromiumError("Chromium closed its DevTools pipe (did it crash or fail to start?)")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                reply = self._read_message(deadline)
            except TimeoutError:
                raise ChromiumError(f"no answer from Chromium to {method} within {timeout or self.timeout:.0f} s")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ChromiumError(f"{method}: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == method and event.get("sessionId") == session:
                    del self.events[i]
                    return True
            try:
                message = self._read_message(deadline)
            except TimeoutError:
                return False
            if "method" in message:
                self.events.append(message)

    # -- pages -------------------------------------------------------------------------------
    def probe(self, url: str) -> dict:
        """Load ``url`` in a fresh tab; return the page probe's result, or ``{"loadError": ...}``."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            self.send("Page.enable", session=session)
            self.send("Emulation.setDeviceMetricsOverride", VIEWPORT, session=session)
            self.events = [e for e in self.events if e.get("sessionId") != session]
            nav = self.send("Page.navigate", {"url": url}, session=session)
            if nav.get("errorText"):
                return {"loadError": nav["errorText"]}
            if not self.wait_event("Page.loadEventFired", session, self.timeout):
                return {"loadError": f"the load event did not fire within {self.timeout:.0f} s"}
            result = self.send("Runtime.evaluate", {"expression": PAGE_PROBE, "awaitPromise": True,
                                                    "returnByValue": True}, session=session)
            if "exceptionDetails" in result:
                return {"loadError": f"the page probe failed: {result['exceptionDetails'].get('text')}"}
            return json.loads(result["result"]["value"])
        finally:
            self.send("Target.closeTarget", {"targetId": target})
            self.events = [e for e in self.events if e.get("sessionId") != session]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (ChromiumError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium executable: ``explicit``, ``$CHROMIUM``, or the first of the usual names on PATH."""
    for name in (explicit, os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def pages_of(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html")
                  if not any(part in SKIPPED_FOLDERS for part in p.relative_to(site).parts))


def toc_pages(toc: Path) -> list[str]:
    """The ``file:`` / ``root:`` entries of a jupyter-book ``_toc.yml`` (without YAML: one entry per line)."""
    entries = re.findall(r"^\s*(?:-\s*)?(?:file|root):\s*['\"]?([^'\"#\s]+)", toc.read_text(), flags=re.MULTILINE)
    return [str(Path(e).with_suffix("")) for e in entries]


def _redirect_of(page: Path) -> str | None:
    """The file URL a ``<meta http-equiv="refresh" content="0; url=...">`` page sends the reader to, else None."""
    match = re.search(r"""<meta[^>]+http-equiv=["']?refresh["']?[^>]*content=["'][^"';]*;\s*url=([^"']+)""",
                      page.read_text(errors="replace")[:4096], flags=re.IGNORECASE)
    return (page.parent / match.group(1).strip()).resolve().as_uri() if match else None


def _link_target(href: str, site: Path) -> tuple[Path, str] | None:
    """(file, fragment) of an internal link, None for an external one."""
    parts = urlsplit(href)
    if parts.scheme != "file":
        return None
    path = Path(unquote(parts.path))
    try:
        path.relative_to(site)
    except ValueError:
        return None
    if path.is_dir():
        path = path / "index.html"
    return path, unquote(parts.fragment)


def first_screen_problems(info: dict, first_screen: int = FIRST_SCREEN) -> list[str]:
    """What keeps a chapter page (a page with notebook cells) from showing its finding and its main figure in the
    first ``first_screen`` pixels, from the page probe's ``notebook``, ``findingTop`` and ``figureTop``."""
    if not info.get("notebook"):
        return []
    where = f"below the first screen ({first_screen} px at {VIEWPORT['width']} px wide)"
    problems = []
    for key, what, missing in (("findingTop", "the finding (the cell tagged finding)",
                                "no finding on this chapter page (tag its cell finding)"),
                               ("figureTop", "the first figure", "no figure on this chapter page")):
        if info.get(key) is None:
            problems.append(missing)
        elif info[key] > first_screen:
            problems.append(f"{what} starts at {info[key]} px, {where}")
    return problems


def check_site(site: str | os.PathLike, *, toc: str | os.PathLike | None = None,
               chromium: str | None = None, first_screen: int = FIRST_SCREEN) -> list[str]:
    """Problems found in the built site ``site`` (a folder of HTML), one line each; [] when all is well.
    ``first_screen``: how far down (px) a chapter page's finding and first figure may start."""
    site = Path(site).resolve()
    problems: list[str] = []
    pages = pages_of(site)
    if not pages:
        return [f"{site}: no HTML pages (was the book built?)"]
    if toc is not None:
        for entry in toc_pages(Path(toc)):
            if not (site / f"{entry}.html").is_file():
                problems.append(f"{entry}.html: the table of contents lists it, but it was not built")
    executable = find_chromium(chromium)
    if executable is None:
        raise ChromiumError("Chromium not found: install it (Debian: apt-get install chromium) or pass --chromium")
    browser = Chromium(executable)
    seen: dict[Path, dict] = {}
    try:
        for page in pages:
            target = _redirect_of(page)
            seen[page] = {"redirect": target} if target else browser.probe(page.as_uri())
    finally:
        browser.close()
    for page, info in seen.items():
        name = page.relative_to(site).as_posix()
        if "loadError" in info:
            problems.append(f"{name}: does not load ({info['loadError']})")
            continue
        if "redirect" in info:  # a redirect page (the book's index.html): its target must exist
            info.update(textLength=1, text="", brokenImages=[], errorBlocks=[], links=[info["redirect"]])
        if info["textLength"] == 0:
            problems.append(f"{name}: the page has no text")
        for src in info["brokenImages"]:
            problems.append(f"{name}: image not drawn: {src}")
        for role in ("{glue", "{cite"):
            if role in info["text"]:
                where = info["text"].index(role)
                snippet = " ".join(info["text"][where:where + 60].split())
                problems.append(f"{name}: raw {role} role text: {snippet!r}")
        problems += [f"{name}: {problem}" for problem in first_screen_problems(info, first_screen)]
        if "Traceback (most recent call last)" in info["text"]:
            problems.append(f"{name}: a traceback is shown")
        for block in info["errorBlocks"]:
            problems.append(f"{name}: error output: {' '.join(block.split())!r}")
        for href in sorted(set(info["links"])):
            target = _link_target(href, site)
            if target is None:
                continue
            path, fragment = target
            shown = path.relative_to(site).as_posix() + (f"#{fragment}" if fragment else "")
            if not path.exists():
                problems.append(f"{name}: dead link to {shown}")
            elif fragment and path.suffix == ".html":
                ids = seen[path]["ids"] if path in seen and "ids" in seen[path] else None
                if ids is not None and fragment not in ids:
                    problems.append(f"{name}: link to a missing anchor: {shown}")
    return problems


#: Build warnings that leave a hole in a page without any trace in its HTML (a glued value or a citation
#: that was not found renders as nothing).
LOG_PATTERNS = (r"\[mystnb\.glue\]", r"No key '[^']*' found in glue", r"Unknown interpreted text role",
                r"could not find bibtex key", r"citation not found", r"\[bibtex\.", r"unknown directive or role")


def log_problems(log: str | os.PathLike) -> list[str]:
    """The build log's warnings about glued values, roles and citations (see :data:`LOG_PATTERNS`), one line each."""
    pattern = re.compile("|".join(LOG_PATTERNS))
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    lines = (ansi.sub("", line).strip() for line in Path(log).read_text(errors="replace").splitlines())
    return [f"build log: {line}" for line in lines if "WARNING" in line and pattern.search(line)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", help="the built HTML folder, e.g. _build/html")
    parser.add_argument("--toc", default=None, help="jupyter-book _toc.yml: every chapter in it must be built")
    parser.add_argument("--chromium", default=None, help="Chromium executable (default: chromium on PATH)")
    parser.add_argument("--log", default=None,
                        help="the build's output: its warnings about glue and citations fail too")
    parser.add_argument("--first-screen", type=int, default=FIRST_SCREEN,
                        help=f"how far down (px, at {VIEWPORT['width']} px wide) a chapter's finding and first figure "
                             f"may start (default {FIRST_SCREEN})")
    args = parser.parse_args(argv)
    try:
        problems = check_site(args.site, toc=args.toc, chromium=args.chromium, first_screen=args.first_screen)
    except ChromiumError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.log is not None:
        problems += log_problems(args.log)
    for line in problems:
        print(line)
    n_pages = len(pages_of(Path(args.site)))
    print(f"{n_pages} pages checked in Chromium: " + (f"{len(problems)} problems" if problems else "all good"),
          file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
