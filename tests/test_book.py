"""The book's pipeline: papermill -> summary -> Jupyter Book, on the smoke notebook only.

    pytest -m book        # about half a minute on 2 cores

Builds the quick book with only notebooks/99_smoke.ipynb (plus the prose pages and the results
summary) into a temporary folder, then checks every chapter of the table of contents that was
built: its page exists, holds as many images as its source has figures (and each image file
exists), and no page loads anything from the network (MathJax, RequireJS and the widget manager
come from book/vendor). Also: a notebook that raises fails the build with its name.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.book

pytest.importorskip("jupyter_book")
pytest.importorskip("papermill")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
BUILD = [sys.executable, str(ROOT / "book" / "build.py")]

# <script src="http://...">, <script src="//...">, <link href="https://..."> (stylesheets, preloads)
EXTERNAL_ASSET = re.compile(
    r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.I)
INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.I | re.S)
IMG_SRC = re.compile(r"<img\b[^>]*\bsrc=\"([^\"]+)\"", re.I)
SCRIPT_SRC = re.compile(r"<script\b[^>]*\bsrc=\"([^\"]+)\"", re.I)


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    # The whole quick book (`make book QUICK=1`): every chapter executed and rendered.
    proc = subprocess.run(BUILD + ["--quick", "--builddir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    html = out / "_build" / "html"
    toc = yaml.safe_load((out / "_build" / "_toc.build.yml").read_text())
    docs = [toc["root"]] + [c["file"] for p in toc.get("parts", []) for c in p.get("chapters", [])]
    return {"html": html, "docs": docs, "log": log}


def _source(doc: str) -> Path:
    for suffix in (".ipynb", ".md"):
        if (ROOT / f"{doc}{suffix}").exists():
            return ROOT / f"{doc}{suffix}"
    raise AssertionError(f"no source for chapter {doc}")


def _expected_images(src: Path) -> int:
    """Figures the page must show: image outputs of a notebook, figure/image directives of a page."""
    if src.suffix == ".ipynb":
        nb = json.loads(src.read_text())
        return sum(1 for cell in nb["cells"] for out in cell.get("outputs", [])
                   if {"image/png", "image/svg+xml", "image/jpeg"} & set(out.get("data", {})))
    text = src.read_text()
    return len(re.findall(r"^```\{(?:figure|image)\}", text, re.M)) + len(re.findall(r"!\[", text))


def test_every_chapter_page_exists_with_its_figures(book):
    html = book["html"]
    assert (html / "index.html").exists()
    chapters = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert len(chapters) >= 8
    for name in chapters:  # every notebook is a chapter of the built book
        assert f"book/generated/{name}" in book["docs"], name
    assert "book/generated/results_summary" in book["docs"]
    for doc in book["docs"]:
        page = html / f"{doc}.html"
        assert page.exists(), f"chapter {doc}: no page {page}"
        text = page.read_text()
        srcs = [s for s in IMG_SRC.findall(text) if "_static/" not in s]  # not theme images
        want = _expected_images(_source(doc))
        assert len(srcs) >= want, f"chapter {doc}: {len(srcs)} <img>, its source has {want} figures"
        for s in srcs:
            assert (page.parent / s.split("?")[0]).resolve().exists(), f"{doc}: missing image {s}"


def test_intro_shows_both_figures(book):
    text = (book["html"] / "book" / "intro.html").read_text()
    assert "layouts.svg" in text and "speculative_loop.svg" in text


def test_no_page_loads_anything_from_the_network(book):
    html = book["html"]
    pages = sorted(p for p in html.rglob("*.html") if "_static" not in p.parts)  # not templates
    assert pages
    for page in pages:
        text = page.read_text()
        hit = EXTERNAL_ASSET.search(text)
        assert not hit, f"{page.relative_to(html)}: external asset {text[hit.start():hit.start() + 160]}"
        for body in INLINE_SCRIPT.findall(text):
            if "application/vnd.jupyter.widget" in text and body.lstrip().startswith("{"):
                continue  # widget state JSON: data, not code
            assert not re.search(r"https?://", body), \
                f"{page.relative_to(html)}: URL in an inline script: {body[:200]}"
        for src in SCRIPT_SRC.findall(text):  # every local script exists (vendored ones included)
            assert (page.parent / src.split("?")[0]).resolve().exists(), f"{page.name}: {src}"
    for css in html.joinpath("_static").rglob("*.css"):
        assert not re.search(r"url\(\s*[\"']?(?:https?:)?//", css.read_text(errors="replace")), css


def test_math_and_widgets_use_the_vendored_scripts(book):
    html = book["html"]
    smoke = (html / "book" / "generated" / "99_smoke.html").read_text()
    intro = (html / "book" / "intro.html").read_text()
    for text in (smoke, intro):
        assert "mathjax/tex-chtml-full.js" in text
        assert 'class="math' in text
    assert "application/vnd.jupyter.widget-state+json" in smoke
    assert "application/vnd.jupyter.widget-view+json" in smoke
    assert "requirejs/require.js" in smoke and "html-manager/embed-amd.js" in smoke
    assert "shims/mathjax2-hub.js" in smoke
    # widgets scripts only where there are widgets
    assert "embed-amd.js" not in intro


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_offline_browser_typesets_math_and_renders_widgets(book, tmp_path):
    """Headless Chromium, without network where `unshare -n` works: the DOM after scripts ran."""
    page = book["html"] / "book" / "generated" / "99_smoke.html"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"]).returncode == 0:
        cmd = ["unshare", "-n"] + cmd
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<mjx-container") >= 5, "MathJax did not typeset the page"
    assert dom.count('class="widget-label"') == 2, "the sliders did not render"
    label = dom.split('class="widget-label"', 1)[1][:400]
    assert "<mjx-container" in label, "the math in the widget's label was not typeset"


def test_glued_numbers_reach_the_prose(book):
    smoke = (book["html"] / "book" / "generated" / "99_smoke.html").read_text()
    assert "1.28" in smoke  # smoke_cap = 1 / 0.78, glued, formatted :.2f


def test_kernel_runs_this_interpreter_with_quick_parameters(book):
    nb = json.loads((ROOT / "book" / "generated" / "99_smoke.ipynb").read_text())
    outputs = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert f"kernel interpreter: {sys.executable}" in outputs
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "QUICK = True" in "".join(injected[0]["source"])
    assert "wall time per step" in book["log"]


def test_notebook_sources_are_committed_clean():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        dirty = [c for c in nb["cells"] if c["cell_type"] == "code" and c.get("outputs")]
        assert not dirty, f"{path.name} has outputs: clear them before committing"
        assert any("parameters" in c["metadata"].get("tags", []) for c in nb["cells"]), \
            f"{path.name} has no cell tagged `parameters`"


def test_vendored_assets_match_their_checksums():
    vendor = ROOT / "book" / "vendor"
    lines = (vendor / "SHA256SUMS").read_text().split("\n")
    for line in filter(None, lines):
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name


def test_a_failing_notebook_fails_the_build_with_its_name(tmp_path):
    nbdir, gen = tmp_path / "notebooks", tmp_path / "generated"
    nbdir.mkdir()
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "p", "metadata": {
              "tags": ["parameters"]}, "outputs": [], "source": ["QUICK = False"]},
                    {"cell_type": "code", "execution_count": None, "id": "boom", "metadata": {},
                     "outputs": [], "source": ["raise ValueError('deliberate failure')"]}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (nbdir / "42_broken.ipynb").write_text(json.dumps(nb))
    nb["cells"][1]["source"] = ["print('fine')"]
    (nbdir / "43_fine.ipynb").write_text(json.dumps(nb))
    driver = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'book')!r})
        import build
        build.NOTEBOOK_DIR = build.Path({str(nbdir)!r})
        build.GENERATED = build.Path({str(gen)!r})
        build.NOTEBOOKS = {{"42_broken": {{}}, "43_fine": {{}}}}
        sys.exit(build.main(["--quick", "--no-html", "--jobs", "2", "--builddir", {str(tmp_path)!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", driver], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "build FAILED in notebook 42_broken" in proc.stderr
    assert "ValueError: deliberate failure" in proc.stderr
    assert (gen / "42_broken.ipynb").exists()  # the executed copy, with the error, for reading
    assert "43_fine done in" in proc.stdout  # the other job still ran to its end
