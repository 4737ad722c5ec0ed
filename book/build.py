#!/usr/bin/env python
"""Build the hybridspec book: execute the notebooks with papermill, then render with Jupyter Book.

    make book                 # = python book/build.py          (default parameters: the full book)
    make book QUICK=1         # = python book/build.py --quick  (each notebook's smoke parameters)
    python book/build.py --quick --only 99_smoke      # one notebook + the prose pages
    python book/build.py --no-html                    # execute the notebooks only

Steps, each timed:
  1. papermill executes every notebook of NOTEBOOKS (below) that exists in notebooks/ into
     book/generated/NAME.ipynb, with the kernel running THIS interpreter (sys.executable), the repo
     root as working directory and on PYTHONPATH (so `import hybridspec_core` works). A notebook
     that raises fails the build: the message names it, the exit status is 1, and the executed copy
     with the failing cell is left in book/generated/ for reading. Notebooks run --jobs at a time
     (default: 2, or 1 on a one-core machine), each in its own process with one torch thread
     (their THREADS parameter), longest first; with one job papermill shows per-cell progress bars.
  2. book/summary.py writes book/generated/results_summary.md from book/generated/results/*.csv.
  3. `jupyter-book build . -W --keep-going --all` with a copy of _toc.yml that lists only the
     chapters executed in step 1 (a chapter whose source does not exist yet is dropped, with a
     message). -W: any Sphinx warning (a missing glue key, a broken reference, a missing image)
     fails the build; --keep-going: all of them are listed first. The output is
     _build/html/index.html (or BUILDDIR/_build/html/index.html with --builddir).

Parameter convention for the notebooks (their cell tagged `parameters`): every notebook declares
QUICK = False; --quick passes QUICK=True plus the notebook's smoke parameters from NOTEBOOKS (QUICK
itself only marks the results as smoke results: the notebooks write it into their verdicts, and the
results summary warns). The other names: the models (MODEL, MODELS, or one per role:
PARALLEL_MODEL, SEQUENTIAL_MODEL, CONTROL_MODEL; SMALL_MODEL and LARGE_MODEL for the scale pair;
names of shipped miniatures, local folders or hub ids), K_VALUES or K, TEMPERATURES or TEMPERATURE,
N_PROMPTS (one-round acceptance prompts), N_GEN_PROMPTS and MAX_NEW_TOKENS (full generations),
EVAL_TOKENS (held-out tokens for perplexity and divergence), N_BOOT, DEVICE, THREADS (torch CPU
threads, default 1: the miniatures gain nothing from more, and lose a lot on a busy machine), SEED, OUTPUT_DIR
(default "book/generated/results", relative to the repo root). `papermill --help-notebook
notebooks/NAME.ipynb` lists a notebook's own. papermill reads the parameters cell line by line:
one assignment per line, and no "=" inside a trailing comment (such a line is skipped with
"Unable to parse line", and `papermill --help-notebook` then misses it).

Before a notebook runs, the CSVs it wrote last time (book/generated/results/NN_*.csv, NN = its
number) are deleted, so the results summary never mixes in a stale file.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
GENERATED = ROOT / "book" / "generated"
TOC = ROOT / "_toc.yml"

# name -> smoke parameters used by --quick (QUICK=True is always added). Order = execution order.
# The smoke parameters of a notebook are the names of its `parameters` cell; keep them in step.
NOTEBOOKS: dict[str, dict] = {
    "00_miniatures": {},
    "01_acceptance_gap": {"N_PROMPTS": 8, "N_GEN_PROMPTS": 2, "MAX_NEW_TOKENS": 12, "EVAL_TOKENS": 1024,
                          "N_BOOT": 200},
    "02_scale_invariance": {"N_PROMPTS": 8, "N_BOOT": 200, "N_PERMUTATIONS": 1000},
    "03_perplexity_predicts_alpha": {"N_PROMPTS": 6, "N_DRAFTS_PER_MODEL": 3, "EVAL_TOKENS": 1024,
                                     "N_BOOT": 200},
    "04_layerskip_vs_component": {"N_PROMPTS": 8, "LAYER_SKIP_FRACTIONS": [0.2, 0.33],
                                  "EARLY_EXIT_FRACTIONS": [0.5], "N_BOOT": 200},
    "05_explorer": {"N_PROMPTS": 4, "N_GEN_PROMPTS": 1, "MAX_NEW_TOKENS": 12, "EVAL_TOKENS": 512,
                    "K_VALUES": [1, 4], "N_BOOT": 200},
    # Reads bench/results/latest.json, else the committed reference.json; runs BENCH_ARGS only if both are missing.
    "06_when_does_it_pay": {"K_VALUES": [1, 2, 4],
                            "BENCH_ARGS": "--models falcon-h1-s --contexts 64,256 --ks 1,2 --new-tokens 12 --repeats 1 "
                                          "--micro-repeats 2 --paper-ks 2 --paper-new-tokens 6 --hf-ks 2 --growth 8,16 "
                                          "--no-fit-longest --long-ks ''"},
    # The pipeline check: seaborn plot, glue, math, an ipywidgets slider (the book's appendix).
    "99_smoke": {"K_MAX": 6},
}

# Minutes each notebook took in a full build on one thread (ordering only: the longest start first).
EXPECTED_MINUTES = {"04_layerskip_vs_component": 3.6, "01_acceptance_gap": 3.0, "03_perplexity_predicts_alpha": 3.0,
                    "05_explorer": 1.2, "02_scale_invariance": 1.1, "06_when_does_it_pay": 0.2, "00_miniatures": 0.2}

KERNEL_NAME = "python3"


class NotebookFailed(RuntimeError):
    """A notebook raised (or its kernel died) under papermill."""

    def __init__(self, name: str, detail: str, executed: Path):
        super().__init__(f"notebook {name} FAILED: {detail}\n"
                         f"  the executed copy, with the failing cell, is {_rel(executed)}")
        self.name, self.detail, self.executed = name, detail, executed

    def __reduce__(self):  # it crosses from a worker process to the build
        return NotebookFailed, (self.name, self.detail, self.executed)


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _fmt(seconds: float) -> str:
    return f"{seconds:6.1f} s" if seconds < 120 else f"{seconds / 60:6.1f} min"


def prepare_kernel(builddir: Path) -> None:
    """Make kernel `python3` run this interpreter, whatever kernelspecs the user has installed.

    A private kernelspec directory goes first on JUPYTER_PATH (the highest-priority search path of
    jupyter_client), so a `python3` spec in ~/.local/share/jupyter cannot send the notebooks to
    another interpreter. The notebooks' metadata keeps the portable name `python3`.
    """
    kdir = builddir / "jupyter" / "kernels" / KERNEL_NAME
    kdir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python 3 (hybridspec: {sys.prefix})",
        "language": "python",
        "metadata": {"debugger": False, "supported_encryption": ["curve"]},
    }
    (kdir / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(builddir / "jupyter")] + [p for p in [os.environ.get("JUPYTER_PATH")] if p])
    # The kernel inherits this environment: the repo root importable, quiet debugger warning.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")


def execute(name: str, src: Path, dst: Path, parameters: dict, progress_bar: bool = True) -> float:
    """Run one notebook with papermill; raise NotebookFailed (naming it) if it errors. Returns seconds."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    dst.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        pm.execute_notebook(
            str(src), str(dst), parameters=parameters, kernel_name=KERNEL_NAME, language="python",
            cwd=str(ROOT), progress_bar=progress_bar, log_output=False,
            request_save_on_cell_execute=True,
        )
        return time.perf_counter() - started
    except PapermillExecutionError as exc:
        raise NotebookFailed(name, f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}", dst) from exc
    except Exception as exc:  # kernel died, timeout, bad parameters, unreadable notebook ...
        raise NotebookFailed(name, f"{type(exc).__name__}: {exc}", dst) from exc


def filtered_toc(executed: set[str], builddir: Path) -> Path:
    """Write a copy of _toc.yml without the generated chapters that were not executed."""
    import yaml

    toc = yaml.safe_load(TOC.read_text())
    prefix = "book/generated/"
    dropped = []

    def keep(entry: dict) -> bool:
        f = str(entry.get("file", ""))
        if not f.startswith(prefix):
            return True
        stem = f[len(prefix):].removesuffix(".ipynb").removesuffix(".md")
        if stem in NOTEBOOKS and stem not in executed:
            dropped.append(stem)
            return False
        return True

    parts = []
    for part in toc.get("parts", []):
        chapters = [c for c in part.get("chapters", []) if keep(c)]
        if chapters:
            parts.append({**part, "chapters": chapters})
    toc["parts"] = parts
    out = builddir / "_toc.build.yml"
    out.write_text("# Written by book/build.py from _toc.yml: only the chapters executed now.\n"
                   + yaml.safe_dump(toc, sort_keys=False))
    if dropped:
        print(f"[book] chapters left out of this build (not executed): {', '.join(dropped)}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke parameters (QUICK=True and each notebook's smoke dict)")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="execute and render only these notebooks (repeatable or comma-separated);"
                         " the prose pages are always rendered")
    ap.add_argument("--builddir", type=Path, default=ROOT,
                    help="where _build/ goes (default: the repo root, so _build/html/index.html)")
    ap.add_argument("--no-html", action="store_true", help="execute the notebooks only")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="notebooks executed at once, one process each (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")

    builddir = args.builddir.resolve()
    (builddir / "_build").mkdir(parents=True, exist_ok=True)
    selected = list(NOTEBOOKS)
    if args.only:
        wanted = [n.strip().removesuffix(".ipynb") for o in args.only for n in o.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in NOTEBOOKS]
        if unknown:
            ap.error(f"unknown notebook(s) {unknown}; known: {', '.join(NOTEBOOKS)}")
        selected = [n for n in NOTEBOOKS if n in wanted]

    prepare_kernel(builddir / "_build")
    timings: list[tuple[str, float]] = []
    executed: set[str] = set()
    t_all = time.perf_counter()
    print(f"[book] {'quick' if args.quick else 'full'} build, python {sys.executable}")
    runs = []
    for name in selected:
        src = NOTEBOOK_DIR / f"{name}.ipynb"
        if not src.exists():
            print(f"[book] skip {name}: {_rel(src)} does not exist yet")
            continue
        params = {"QUICK": True, **NOTEBOOKS[name]} if args.quick else {}
        for stale in sorted((GENERATED / "results").glob(f"{name.split('_')[0]}_*.csv")):
            stale.unlink()
        runs.append((name, src, GENERATED / f"{name}.ipynb", params))
    # Longest first, so that two jobs finish close together (measured full-build times).
    runs.sort(key=lambda run: -EXPECTED_MINUTES.get(run[0], 1.0))
    failed = None
    # fork: the children inherit the kernelspec environment set above; spawn would re-run this script.
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs,
                                                mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {}
        for name, src, dst, params in runs:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "defaults"
            print(f"[book] papermill {name} ({shown}) -> {_rel(dst)}", flush=True)
            futures[pool.submit(execute, name, src, dst, params, args.jobs == 1)] = name
        for completed, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            name = futures[future]
            try:
                seconds = future.result()
            except NotebookFailed as exc:
                print(f"[book] ERROR: {exc}", file=sys.stderr, flush=True)
                failed = failed or name
                continue
            timings.append((f"papermill {name}", seconds))
            print(f"[book] {name} done in {_fmt(seconds)} ({completed} of {len(runs)} notebooks, "
                  f"{_fmt(time.perf_counter() - t_all).strip()} so far)", flush=True)
            executed.add(name)
    if failed:
        print(f"[book] build FAILED in notebook {failed}", file=sys.stderr)
        return 1
    timings.sort(key=lambda step: list(NOTEBOOKS).index(step[0].split()[-1]))
    if len(runs) > 1 and args.jobs > 1:
        timings.append((f"notebooks ({args.jobs} at a time)", time.perf_counter() - t_all))

    t0 = time.perf_counter()
    summary = subprocess.run([sys.executable, str(ROOT / "book" / "summary.py")], cwd=ROOT)
    if summary.returncode:
        print("[book] ERROR: book/summary.py failed", file=sys.stderr)
        return 1
    timings.append(("summary.py", time.perf_counter() - t0))

    if not args.no_html:
        toc = filtered_toc(executed, builddir / "_build")
        cmd = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
               "build", str(ROOT), "--toc", str(toc),
               "--path-output", str(builddir), "-W", "--keep-going", "--all"]
        print("[book] jupyter-book " + " ".join(cmd[3:]), flush=True)
        t0 = time.perf_counter()
        jb = subprocess.run(cmd, cwd=ROOT)
        timings.append(("jupyter-book build", time.perf_counter() - t0))
        if jb.returncode:
            print("[book] ERROR: jupyter-book build failed (warnings count as errors: see above)",
                  file=sys.stderr)
            return 1
        print(f"[book] HTML: {_rel(builddir / '_build' / 'html' / 'index.html')}")

    timings.append(("total", time.perf_counter() - t_all))
    print("[book] wall time per step:")
    for step, seconds in timings:
        print(f"[book]   {step:<40s} {_fmt(seconds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
