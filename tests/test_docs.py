"""The built documentation, as a reader's browser shows it.

``make docs`` builds the site into ``docs/_build/html``.  These tests open
the getting-started page in headless Chromium (Debian's ``chromium``) and
check what a newcomer sees: the title, the code blocks, the pictures, and
that every link to another page of the site, or to an anchor in one, leads
somewhere.  They also check that the API reference lists every public name.

Without a built site or Chromium they are skipped, unless
``BOCPY_REQUIRE_BUILT=1`` (set by ``make test``) makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import bocpy

HTML = Path(__file__).resolve().parents[1] / "docs" / "_build" / "html"


def require(condition: bool, message: str) -> None:
    if condition:
        return
    if os.environ.get("BOCPY_REQUIRE_BUILT") == "1":
        pytest.fail(message)
    pytest.skip(message)


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    require(path is not None, "no chromium on PATH: apt-get install chromium")
    assert path is not None
    return path


def page(name: str) -> Path:
    path = HTML / name
    require(path.exists(), f"{path} is not built: run `make docs`")
    return path


def headless(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Page(HTMLParser):
    """What the tests look at in a rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.headings: list[str] = []
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.images: list[str] = []
        self.code_blocks = 0
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.add(attributes["id"] or "")
        if tag == "a" and attributes.get("href"):
            self.links.append(attributes["href"] or "")
        elif tag == "img" and attributes.get("src"):
            self.images.append(attributes["src"] or "")
        elif tag == "pre":
            self.code_blocks += 1
        elif tag == "title":
            self._in = tag
        elif tag == "h1":
            self._in = tag
            self.headings.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in == "h1":
            self.headings[-1] += data


def rendered(path: Path) -> Page:
    """The page's DOM after Chromium has loaded it."""
    result = headless("--dump-dom", path.as_uri())
    assert result.returncode == 0, result.stderr
    assert "<html" in result.stdout, result.stdout[:500]
    parsed = Page()
    parsed.feed(result.stdout)
    return parsed


def static_ids(path: Path) -> set[str]:
    parsed = Page()
    parsed.feed(path.read_text(encoding="utf-8"))
    return parsed.ids


def test_getting_started_renders_with_title_and_code():
    dom = rendered(page("getting-started.html"))
    assert "Getting started" in dom.title
    # The sidebar's site name is an <h1> too; the page's own heading is last.
    assert [h.strip().rstrip("¶").strip() for h in dom.headings][-1] == "Getting started"
    # The install commands, the first program, its output, and the rest.
    assert dom.code_blocks >= 6


def test_getting_started_has_no_broken_local_links():
    path = page("getting-started.html")
    dom = rendered(path)
    checked = 0
    for link in dom.links + dom.images:
        parts = urlsplit(link)
        if parts.scheme in ("http", "https", "mailto"):
            continue
        if parts.scheme == "file":
            target = Path(unquote(parts.path))
        elif parts.path:
            target = (path.parent / unquote(parts.path)).resolve()
        else:
            target = path
        assert target.exists(), f"{link!r} on {path.name} leads to a missing {target}"
        if parts.fragment and target.suffix == ".html":
            ids = dom.ids if target == path else static_ids(target)
            assert parts.fragment in ids, f"{link!r} on {path.name}: no #{parts.fragment}"
        checked += 1
    assert checked >= 10, dom.links  # the sidebar and the page's own references


def test_getting_started_screenshot_is_not_blank(tmp_path: Path):
    shot = tmp_path / "getting-started.png"
    result = headless(
        f"--screenshot={shot}", "--window-size=1200,1600", page("getting-started.html").as_uri()
    )
    assert result.returncode == 0, result.stderr
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 1600)
    # A blank page compresses to a few KiB; text, code and colours do not.
    assert len(data) > 40_000, len(data)


def test_the_api_reference_lists_every_public_name():
    ids = static_ids(page("api.html"))
    missing = [name for name in bocpy.__all__ if f"bocpy.{name}" not in ids]
    assert not missing, f"docs/api.rst does not document: {missing}"


def test_every_page_of_the_site_is_built():
    for name in (
        "index",
        "getting-started",
        "concepts",
        "pinned-cowns",
        "integrations",
        "executor",
        "diagnostics",
        "api",
        "differences",
        "benchmarks",
        "reliability",
    ):
        text = page(f"{name}.html").read_text(encoding="utf-8")
        assert re.search(r"<h1>", text), name
    for figure in ("chain", "fan_out", "cpu_speedup", "pump", "executor"):
        assert (HTML / "_images" / f"{figure}.png").exists(), figure
