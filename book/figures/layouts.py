#!/usr/bin/env python
"""Draw the introduction's two figures (committed SVGs; rerun after editing this file).

    python book/figures/layouts.py

writes book/figures/layouts.svg (the two hybrid layouts and what the component-aware draft removes)
and book/figures/speculative_loop.svg (one round of self-speculative decoding). Matplotlib only;
the SVGs are reproducible (fixed hash salt, no date, text as paths so no font is needed to view).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch  # noqa: E402

HERE = Path(__file__).resolve().parent
plt.rcParams.update({
    "svg.hashsalt": "hybridspec",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 12,
})
META = {"Date": None, "Creator": "book/figures/layouts.py"}

SSM = "#3a9e8f"      # Mamba-2 / Gated DeltaNet
ATTN = "#e08a2e"     # softmax attention
MLP = "#7d8fb3"
NORM = "#d9d9d9"
MASKED = dict(hatch="////", alpha=0.35)


def box(ax, x, y, w, h, text, color, masked=False, fontsize=12, textcolor="white", **kw):
    """A rounded box centred at (x, y); masked boxes are faded and hatched."""
    style = dict(boxstyle="round,pad=0.02,rounding_size=0.08", linewidth=1.2,
                 edgecolor="0.25", facecolor=color)
    if masked:
        style.update(facecolor=color, alpha=0.35, hatch="////")
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, **style))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize,
            color="0.15" if masked or textcolor is None else textcolor, **kw)


def arrow(ax, p, q, color="0.25", lw=1.4, style="-|>", rad=0.0, **kw):
    ax.add_patch(FancyArrowPatch(p, q, arrowstyle=style, mutation_scale=14, color=color, lw=lw,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0, **kw))


def parallel_panel(ax):
    ax.set_title("(a) Parallel hybrid: Falcon-H1\nevery layer has both mixers, side by side",
                 fontsize=13, loc="left")
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    # residual stream in, norm, split into two branches, summed, MLP, out
    arrow(ax, (5, 0.3), (5, 1.35))
    ax.text(5.15, 0.55, "hidden state $h_\\ell$", fontsize=11, va="center")
    box(ax, 5, 1.8, 3.2, 0.8, "RMSNorm", NORM, textcolor="0.15")
    arrow(ax, (5, 2.2), (2.9, 3.5))
    arrow(ax, (5, 2.2), (7.1, 3.5))
    box(ax, 2.9, 4.3, 3.4, 1.5, "Mamba-2\n(SSM branch)", SSM)
    box(ax, 7.1, 4.3, 3.4, 1.5, "", ATTN, masked=True)
    ax.text(7.1, 4.55, "Attention\n(branch)", ha="center", va="center", color="0.15")
    ax.text(7.1, 3.8, "draft: output = 0", fontsize=10.5, ha="center", va="center",
            color="#8a4500", style="italic")
    arrow(ax, (2.9, 5.05), (4.72, 6.25))
    arrow(ax, (7.1, 5.05), (5.28, 6.25))
    ax.add_patch(plt.Circle((5, 6.5), 0.33, facecolor="white", edgecolor="0.25", lw=1.4))
    ax.text(5, 6.5, "+", ha="center", va="center", fontsize=16)
    # residual connection around the mixers
    ax.plot([5, 0.5, 0.5, 4.67], [1.0, 1.0, 6.5, 6.5], color="0.55", lw=1.1, ls="--")
    ax.text(0.62, 3.8, "residual", rotation=90, fontsize=10, color="0.45", va="center")
    arrow(ax, (5, 6.83), (5, 7.55))
    box(ax, 5, 8.0, 3.2, 0.9, "norm + MLP", MLP)
    arrow(ax, (5, 8.45), (5, 9.4))
    ax.text(5.15, 9.2, "$h_{\\ell+1}$", fontsize=11, va="center")
    ax.text(9.9, 9.5, "× 36 layers\n(0.5B)", ha="right", va="top", fontsize=11, color="0.3")
    ax.text(5, -0.45, r"$h + m_\mathrm{ssm}\,\mathrm{Mamba}(x) + m_\mathrm{attn}\,\mathrm{Attn}(x)$,"
            r"  $x = \mathrm{RMSNorm}(h)$",
            ha="center", fontsize=11, color="0.25")


def sequential_panel(ax):
    ax.set_title("(b) Sequential hybrid: Qwen3.5\n3 Gated DeltaNet layers, then 1 attention layer",
                 fontsize=13, loc="left")
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    ys = [1.0, 3.0, 5.0, 7.0]
    kinds = ["Gated DeltaNet + MLP"] * 3 + ["Attention + MLP"]
    arrow(ax, (4.2, 0.0), (4.2, ys[0] - 0.45))
    for i, (y, kind) in enumerate(zip(ys, kinds)):
        is_attn = kind.startswith("Attention")
        if is_attn:
            box(ax, 4.2, y, 5.6, 0.9, "", ATTN, masked=True)
            ax.text(4.2, y + 0.17, kind, ha="center", va="center", color="0.15")
            ax.text(4.2, y - 0.22, "draft: identity (skipped)", fontsize=10.5,
                    ha="center", va="center", color="#8a4500", style="italic")
        else:
            box(ax, 4.2, y, 5.6, 0.9, kind, SSM)
        if i < 3:
            arrow(ax, (4.2, y + 0.45), (4.2, ys[i + 1] - 0.45))
    arrow(ax, (4.2, ys[-1] + 0.45), (4.2, 8.6))
    # bracket: x 6 blocks
    ax.plot([7.35, 7.6, 7.6, 7.35], [0.45, 0.45, 7.55, 7.55], color="0.3", lw=1.2)
    ax.text(7.8, 4.0, "× 6 blocks\n= 24 layers\n(18 DeltaNet,\n 6 attention;\n 0.8B)",
            fontsize=11, va="center", color="0.3")
    ax.text(4.2, 9.2, "the attention layer's whole output\nfeeds every later layer",
            ha="center", va="center", fontsize=11, color="0.25")


def layouts_figure(path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 5.6))
    parallel_panel(axes[0])
    sequential_panel(axes[1])
    for ax in axes:
        ax.set_axis_off()
    fig.legend(handles=[Patch(facecolor=SSM, label="Mamba-2 / Gated DeltaNet (kept in the draft)"),
                        Patch(facecolor=ATTN, alpha=0.35, hatch="////", edgecolor="0.25",
                              label="softmax attention (removed in the draft)"),
                        Patch(facecolor=MLP, label="MLP")],
               loc="lower center", ncol=3, frameon=False, fontsize=11)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.87, bottom=0.12, wspace=0.08)
    fig.savefig(path, metadata=META)
    plt.close(fig)


def loop_figure(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9.6, 3.9))
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 4.6)
    ax.set_axis_off()
    steps = [
        (2.0, "1. Draft", "the same model, its\nattention masked,\nproposes $k$ tokens", SSM),
        (6.0, "2. Verify", "the full model scores\nall $k$ in ONE forward\non top of its cache", ATTN),
        (10.0, "3. Accept, roll back", "keep the agreeing prefix\n+ 1 token of the full model;\nrestore the states to it", MLP),
    ]
    for x, head, body, color in steps:
        ax.add_patch(FancyBboxPatch((x - 1.8, 1.75), 3.6, 2.3, boxstyle="round,pad=0.02,rounding_size=0.12",
                                    facecolor=color, edgecolor="0.25", lw=1.2, alpha=0.18))
        ax.text(x, 3.6, head, ha="center", va="center", fontsize=13, weight="bold")
        ax.text(x, 2.7, body, ha="center", va="center", fontsize=11.5, linespacing=1.4)
    arrow(ax, (3.85, 2.9), (4.15, 2.9))
    arrow(ax, (7.85, 2.9), (8.15, 2.9))
    arrow(ax, (10.0, 1.72), (2.0, 1.72), rad=-0.18, color="0.35")
    ax.text(6.0, 0.55, "repeat from the last accepted token. Lossless: the output is that of plain "
            "decoding\nwith the full model (greedy: token for token; sampling: the same distribution)",
            ha="center", va="center", fontsize=11, color="0.25")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.01)
    fig.savefig(path, metadata=META)
    plt.close(fig)


def main() -> None:
    layouts_figure(HERE / "layouts.svg")
    loop_figure(HERE / "speculative_loop.svg")
    for name in ("layouts.svg", "speculative_loop.svg"):
        p = HERE / name
        print(f"wrote {p.relative_to(HERE.parent.parent)} ({p.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
