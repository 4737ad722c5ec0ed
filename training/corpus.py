"""The miniatures' corpus: the reStructuredText sources of the Python documentation.

Debian's `python3-doc` package ships them as `/usr/share/doc/python3.X/html/_sources/**/*.rst.txt`
(about 500 documents, 12 MB for 3.11; PSF licence). This module finds them, splits them BY DOCUMENT
into train / validation / test, and writes:

- `miniatures/data/test_split.txt`: the test documents, shipped in the repo (the book's evaluation
  text, so neither the book nor the tests need the Debian package);
- `miniatures/data/prompts.jsonl`: the acceptance prompts, built the paper's way (paragraphs of the
  test split longer than 100 characters, in order; the first 200);
- `miniatures/data/LICENSE-PSF.txt`: the licence notice those two files need;
- `training/work/corpus/{train,validation}.txt` (git-ignored): the training text.

Documents are separated in every split file by a line `.. hybridspec-document: RELATIVE/PATH` (a reST
comment, so the file stays valid reST); `read_split` parses it back.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = REPO_ROOT / "training" / "work"
SHIPPED_DATA_DIR = REPO_ROOT / "miniatures" / "data"

DOCS_GLOB = "/usr/share/doc/python3*/html/_sources"
DOC_SEPARATOR = ".. hybridspec-document: "
SPLIT_SALT = "hybridspec-corpus-split-v1"  # changing it re-deals every document between splits
PROMPT_MIN_CHARS = 100  # the paper: WikiText-2 lines longer than 100 characters
PROMPT_COUNT = 200  # the paper: the first 200 such lines

# The test and validation splits are filled up to these sizes, taking documents in hash order; a
# document larger than MAX_HELD_OUT_DOC_BYTES always goes to train so that the held-out splits hold
# many documents (a single 200 KB page would otherwise be half the test split).
TEST_TARGET_BYTES = 300_000
VALIDATION_TARGET_BYTES = 300_000
MAX_HELD_OUT_DOC_BYTES = 60_000


@dataclass(frozen=True)
class Document:
    name: str  # path relative to _sources, e.g. "library/os.rst.txt": the split key
    text: str


# ------------------------------------------------------------------------------------------------
# Finding the sources


def find_sources_root(pattern: str = DOCS_GLOB) -> Path | None:
    """The newest Python version's `_sources` folder, or None.

    Debian links several doc folders to the same place (python3 -> python3.11, ...); resolving them
    and keeping one version avoids near-duplicate documents of two versions landing in two splits.
    """
    roots = {Path(os.path.realpath(p)) for p in glob.glob(pattern) if os.path.isdir(p)}
    roots = [r for r in roots if any(r.rglob("*.rst.txt"))]
    if not roots:
        return None

    def version_key(root: Path) -> tuple:
        match = re.search(r"python(\d+)\.(\d+)", str(root))
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    return max(roots, key=lambda r: (version_key(r), str(r)))


def ensure_python_docs() -> Path:
    """Find the doc sources; install `python3-doc` with apt-get if they are missing."""
    root = find_sources_root()
    if root is not None:
        return root
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise RuntimeError(
            "The Python documentation sources are missing: install Debian's python3-doc "
            "(apt-get install -y python3-doc) or ship training text another way."
        )
    print("python3-doc is missing: installing it with apt-get", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "python3-doc"], check=True, env=env)
    root = find_sources_root()
    if root is None:
        raise RuntimeError("python3-doc was installed but no *.rst.txt sources were found")
    return root


def docs_package_version() -> str:
    """e.g. 'python3-doc 3.11.2-1 (python3.11-doc 3.11.2-6+deb12u9)'; 'unknown' off Debian."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "python3-doc", "python3.*-doc"],
            capture_output=True, text=True, check=False,
        ).stdout
    except FileNotFoundError:
        return "unknown (no dpkg-query)"
    lines = [line.strip() for line in out.splitlines() if line.strip() and " " in line.strip()]
    lines = [line for line in lines if not line.endswith(" ")]
    if not lines:
        return "unknown (python3-doc not installed)"
    main = [line for line in lines if line.startswith("python3-doc ")]
    versioned = [line for line in lines if not line.startswith("python3-doc ")]
    head = main[0] if main else versioned.pop(0)
    return head + (f" ({', '.join(versioned)})" if versioned else "")


def load_documents(root: Path) -> list[Document]:
    """Every *.rst.txt under root, sorted by relative path (the order never depends on the disk)."""
    docs = []
    for path in sorted(root.rglob("*.rst.txt")):
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        if text.strip():
            docs.append(Document(path.relative_to(root).as_posix(), text))
    return docs


# ------------------------------------------------------------------------------------------------
# The split


def split_key(name: str) -> str:
    """A document's place in the deal: a salted hash of its relative path only."""
    return hashlib.sha256(f"{SPLIT_SALT}:{name}".encode()).hexdigest()


def split_documents(
    docs: list[Document],
    test_bytes: int = TEST_TARGET_BYTES,
    validation_bytes: int = VALIDATION_TARGET_BYTES,
    max_held_out_doc_bytes: int = MAX_HELD_OUT_DOC_BYTES,
) -> dict[str, list[Document]]:
    """Deterministic split by document: walk the documents in hash order, fill test, then
    validation, to their target sizes; everything else is train. Each split is returned sorted by
    name. The same document set always gives the same split, on any machine."""
    splits: dict[str, list[Document]] = {"train": [], "validation": [], "test": []}
    filled = {"test": 0, "validation": 0}
    targets = {"test": test_bytes, "validation": validation_bytes}
    for doc in sorted(docs, key=lambda d: split_key(d.name)):
        size = len(doc.text.encode("utf-8"))
        destination = "train"
        if size <= max_held_out_doc_bytes:
            for held_out in ("test", "validation"):
                if filled[held_out] < targets[held_out]:
                    destination = held_out
                    filled[held_out] += size
                    break
        splits[destination].append(doc)
    return {name: sorted(split, key=lambda d: d.name) for name, split in splits.items()}


def write_split(path: Path, docs: list[Document]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(f"{DOC_SEPARATOR}{doc.name}\n")
            f.write(doc.text.rstrip("\n") + "\n")


def read_split(path: str | Path) -> list[Document]:
    """Parse a split file written by write_split back into documents."""
    docs, name, lines = [], None, []
    for line in Path(path).read_text(encoding="utf-8").splitlines(keepends=True):
        if line.startswith(DOC_SEPARATOR):
            if name is not None:
                docs.append(Document(name, "".join(lines)))
            name, lines = line[len(DOC_SEPARATOR):].strip(), []
        else:
            lines.append(line)
    if name is not None:
        docs.append(Document(name, "".join(lines)))
    return docs


# ------------------------------------------------------------------------------------------------
# Prompts and the licence notice


def paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, whitespace-trimmed."""
    return [block.strip() for block in re.split(r"\n\s*\n", text) if block.strip()]


def build_prompts(docs: list[Document], min_chars: int = PROMPT_MIN_CHARS,
                  count: int = PROMPT_COUNT) -> list[dict]:
    """The paper's prompt rule on our text: paragraphs longer than min_chars, in order, first count.
    (Truncation to 512 tokens happens where a tokenizer is known.)"""
    prompts = []
    for doc in docs:
        for index, paragraph in enumerate(paragraphs(doc.text)):
            if len(paragraph) > min_chars:
                prompts.append({"id": len(prompts), "document": doc.name, "paragraph": index,
                                "text": paragraph})
                if len(prompts) >= count:
                    return prompts
    return prompts


def _license_section(license_text: str, heading: str) -> str:
    """The parsed-literal body under a heading of the docs' license.rst.txt."""
    start = license_text.find(heading)
    if start < 0:
        return ""
    body = license_text[start:].split("\n", 2)[2]  # drop heading + underline
    end = re.search(r"\n\S[^\n]*\n-{5,}\n|\n\.\. _", body)
    return body[: end.start() if end else len(body)].replace(".. parsed-literal::", "").strip("\n")


def license_notice(root: Path, package_version: str) -> str:
    license_path = root / "license.rst.txt"
    license_text = license_path.read_text(encoding="utf-8") if license_path.exists() else ""
    release = re.search(r"python(\d+\.\d+)", str(root))
    release = release.group(1) if release else "3"
    psf = _license_section(license_text, "PSF LICENSE AGREEMENT FOR PYTHON").replace("|release|", release)
    bsd0 = _license_section(license_text, "ZERO-CLAUSE BSD LICENSE").replace("|release|", release)
    copyright_path = root / "copyright.rst.txt"
    copyright_lines = []
    if copyright_path.exists():
        # The notices sit between "... documentation is:" and the "-------" rule.
        body = copyright_path.read_text(encoding="utf-8").split("is:", 1)[-1].split("-----")[0]
        copyright_lines = [" ".join(block.split()) for block in re.split(r"\n\s*\n", body)
                           if block.strip()]
    parts = [
        "test_split.txt and prompts.jsonl in this folder are derived from the Python documentation",
        f"(the reStructuredText sources of the Python {release} docs, as shipped by Debian's",
        f"{package_version}). The text is unchanged except that documents were selected (a",
        "deterministic split by document) and concatenated, each preceded by a line",
        f"'{DOC_SEPARATOR}<path>', and prompts.jsonl holds paragraphs cut from those documents.",
        "",
        "The Python documentation is licensed under the PSF License Agreement; examples, recipes and",
        "other code in it are dual licensed under the PSF License Agreement and the Zero-Clause BSD",
        "license. Both texts follow.",
        "",
        *copyright_lines,
        "",
        f"PSF LICENSE AGREEMENT FOR PYTHON {release}",
        "",
        psf or "(the licence text was not found in this copy of the docs: see "
               "https://docs.python.org/3/license.html)",
        "",
        f"ZERO-CLAUSE BSD LICENSE FOR CODE IN THE PYTHON {release} DOCUMENTATION",
        "",
        bsd0,
        "",
    ]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------
# Build


def build_corpus(work_dir: Path = WORK_DIR, shipped_dir: Path = SHIPPED_DATA_DIR,
                 root: Path | None = None) -> dict:
    """Find (or install) the sources, split, write every file. Returns a summary dict, also saved
    as work_dir/corpus/summary.json."""
    root = root or ensure_python_docs()
    package_version = docs_package_version()
    docs = load_documents(root)
    splits = split_documents(docs)
    corpus_dir = Path(work_dir) / "corpus"
    write_split(corpus_dir / "train.txt", splits["train"])
    write_split(corpus_dir / "validation.txt", splits["validation"])
    write_split(shipped_dir / "test_split.txt", splits["test"])
    prompts = build_prompts(splits["test"])
    with open(Path(shipped_dir) / "prompts.jsonl", "w", encoding="utf-8") as f:
        for prompt in prompts:
            f.write(json.dumps(prompt, ensure_ascii=False) + "\n")
    (Path(shipped_dir) / "LICENSE-PSF.txt").write_text(license_notice(root, package_version),
                                                       encoding="utf-8")
    summary = {
        "sources_root": str(root),
        "package_version": package_version,
        "documents": {name: len(split) for name, split in splits.items()},
        "bytes": {name: sum(len(d.text.encode()) for d in split) for name, split in splits.items()},
        "prompts": len(prompts),
        "split_salt": SPLIT_SALT,
    }
    (corpus_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    print(json.dumps(build_corpus(), indent=2))
