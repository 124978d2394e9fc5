"""The figures of `contextbot inspect`, drawn with matplotlib's Agg backend.

Each function takes what `trace.py`, `units.py` or `probe.py` computed and returns a
`Figure`; `save` writes it. Figures are built with `matplotlib.figure.Figure` and an Agg canvas
rather than `pyplot`: no display, no global state, nothing to close.

Reading the conversation figures: the x axis is the conversation itself, one column per character
(↵ marks a newline), with a line where each turn starts and the bot's replies shaded.
"""

from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure

from ..files import write_atomic
from ..errors import ContextbotError
from .trace import unit_label

PLOT_FORMATS = ("png", "svg", "pdf")
HEATMAP_UNITS = 32  # the most active units shown in the conversation figure
DPI = 110


def check_path(path: str | Path) -> Path:
    """Refuse a plot path we could not write, before any work is done."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise ContextbotError(f"{path}: a plot must end in {', '.join('.' + f for f in PLOT_FORMATS)}")
    if path.is_dir():
        raise ContextbotError(f"{path}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise ContextbotError(f"{path}: cannot write the plot (no directory {parent})")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ContextbotError(f"{path}: cannot write the plot (permission denied)")
    return path


#: What the fonts may lack (an emoji, a rare script in a question): drawn as a box, silently.
QUIET_WARNINGS = (r"Glyph \d+ .*missing from", r"Matplotlib currently does not support")


@contextmanager
def plain_text():
    """Draw every string as written: paths, phrases and questions are the user's, so `$...$` is
    not mathtext (a stray `$\\frac` would crash the parser), nothing goes to LaTeX whatever the
    user's matplotlibrc says, and a character no font has prints no warning. Text objects read
    these settings when they are made, tick labels when they are drawn: the figure builders
    and `save` all run inside it."""
    with matplotlib.rc_context({"text.usetex": False, "text.parse_math": False}), \
            warnings.catch_warnings():
        for message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        yield


@plain_text()
def save(fig: Figure, path: Path) -> None:
    """Render and write atomically: a failure leaves no half-written image behind."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lower().lstrip("."), dpi=DPI)
    try:
        write_atomic(path, buf.getvalue())
    except OSError as exc:
        raise ContextbotError(f"{path}: cannot write the plot ({exc.strerror or exc})") from None


def _char_label(text: str) -> str:
    return text.replace("\n", "↵")


def _conversation_axis(turns, axes) -> None:
    """Characters along the bottom axis, turn boundaries and shaded replies on every axis."""
    steps = [s for t in turns for s in t.steps]
    n = len(steps)
    starts, i = [], 0
    for t in turns:
        starts.append(i)
        i += len(t.steps)
    # The axes are aligned by giving them the same limits rather than sharing x: shared axes
    # would each build hundreds of character ticks, which is most of the drawing time.
    for ax in axes:
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_xticks([])
        for s in starts[1:]:
            ax.axvline(s - 0.5, color="black", linewidth=0.8)
    for k, s in enumerate(starts):
        axes[0].annotate(f"turn {k + 1}", (s, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(2, 3), textcoords="offset points", fontsize=8, va="bottom")
    j = 0
    while j < n:  # shade each reply as one span
        if steps[j].part != "reply":
            j += 1
            continue
        k = j
        while k < n and steps[k].part == "reply":
            k += 1
        axes[0].axvspan(j - 0.5, k - 0.5, color="tab:orange", alpha=0.12, linewidth=0)
        j = k
    bottom = axes[-1]
    bottom.set_xticks(range(n), [_char_label(s.text) for s in steps], fontsize=6,
                      fontfamily="monospace")
    bottom.tick_params(axis="x", length=0, pad=2)


def _width(n: int) -> float:
    return min(60.0, max(10.0, 0.085 * n))


def _margins(fig: Figure) -> None:
    """Fixed margins in inches. (Constrained layout would measure every character label in an
    extra drawing pass, doubling the time to save a wide figure.)"""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=1.0 / w, right=1 - 0.8 / w, top=1 - 0.6 / h, bottom=0.4 / h,
                        hspace=0.12)


def _title(fig: Figure, text: str) -> None:
    """A title over the left end of a wide figure, where reading starts."""
    fig.suptitle(text, x=1.0 / fig.get_size_inches()[0], ha="left", fontsize=10)


@plain_text()
def conversation_figure(turns, cell: str, title: str) -> Figure:
    """Three panels over the characters: ‖h‖ per layer; the 32 most active units; the mean of
    each gate per layer. A unit's activity is how much it varies over the conversation (its
    standard deviation): a unit pinned at +1 or -1 throughout shows nothing character by character."""
    steps = [s for t in turns for s in t.steps]
    n, layers = len(steps), len(steps[0].norms)
    x = range(n)
    fig = Figure(figsize=(_width(n), 9))
    ax_norm, ax_units, ax_gates = fig.subplots(3, 1, height_ratios=[2, 4, 2])
    _margins(fig)
    _title(fig, title + "  (the bot's replies are shaded orange)")

    for layer in range(layers):
        ax_norm.plot(x, [s.norms[layer] for s in steps], label=f"layer {layer + 1}", linewidth=1.2)
    ax_norm.set_ylabel("‖h‖")
    ax_norm.set_ylim(bottom=0)
    if layers > 1:
        ax_norm.legend(loc="upper left", fontsize=8)

    h = torch.stack([s.hidden for s in steps])  # (steps, layers * hidden)
    k = min(HEATMAP_UNITS, h.shape[1])
    idx = h.std(0).topk(k).indices  # most active first
    im = ax_units.imshow(h[:, idx].T.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                         interpolation="nearest")
    ax_units.set_yticks(range(k), [unit_label(int(i), h.shape[1] // layers, layers) for i in idx],
                        fontsize=6)
    ax_units.set_ylabel(f"h of the {k} most varying units")
    bar = fig.colorbar(im, cax=ax_units.inset_axes([1.003, 0.0, 0.004, 1.0]))
    bar.ax.tick_params(labelsize=7)

    styles = ["-", "--", ":"]
    drew = False
    for layer in range(layers):
        for g, name in enumerate(steps[0].gates[layer]):
            ax_gates.plot(x, [s.gates[layer][name] for s in steps], linewidth=1.1,
                          linestyle=styles[layer % 3],
                          label=name if layers == 1 else f"L{layer + 1} {name}")
            drew = True
    ax_gates.set_ylim(0, 1)
    ax_gates.set_ylabel("mean gate")
    if drew:
        ax_gates.legend(loc="upper left", fontsize=8, ncol=6)
    else:
        ax_gates.text(0.5, 0.5, f"a vanilla {cell.upper()} has no gates", ha="center", va="center",
                      transform=ax_gates.transAxes)
    _conversation_axis(turns, [ax_norm, ax_units, ax_gates])
    return fig


@plain_text()
def units_figure(turns, units, title: str) -> Figure:
    """LSTMVis-style: the selected units' oriented z-scores over the characters, the phrase
    they were selected on outlined, and their mean above."""
    steps = [s for t in turns for s in t.steps]
    n = len(steps)
    fig = Figure(figsize=(_width(n), 5))
    ax_score, ax_units = fig.subplots(2, 1, height_ratios=[1, 3])
    _margins(fig)
    _title(fig, f"{title}: the units most on over {units.phrase!r} (outlined)")
    first, last = units.char_step[units.span[0]], units.char_step[units.span[1] - 1]
    ax_score.plot(range(n), units.score.numpy(), color="tab:red", linewidth=1.2)
    ax_score.axhline(0, color="grey", linewidth=0.5)
    ax_score.set_ylabel("mean z")
    vmax = max(1.0, float(units.z.abs().max()))
    ax_units.imshow(units.z.numpy(), aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                    interpolation="nearest")
    labels = [("-" if s < 0 else "") + lab for lab, s in zip(units.labels, units.signs)]
    ax_units.set_yticks(range(len(labels)), labels, fontsize=7)
    ax_units.set_ylabel("unit (z, on = red)")
    for ax in (ax_score, ax_units):
        ax.axvspan(first - 0.5, last + 0.5, facecolor="none", edgecolor="black", linewidth=1.5)
    _conversation_axis(turns, [ax_score, ax_units])
    return fig


@plain_text()
def probe_figure(results) -> Figure:
    """Probe accuracy on held-out conversations against the turns since the introduction: one
    line per checkpoint, one panel per question (which person, which gender), chance dotted."""
    targets = list(results[0].accuracy)
    fig = Figure(figsize=(5.2 * len(targets), 4.2), layout="constrained")
    axes = fig.subplots(1, len(targets), sharey=True, squeeze=False)[0]
    for ax, target in zip(axes, targets):
        for r in results:
            ax.plot(r.distances, r.accuracy[target], marker="o", linewidth=1.6, label=r.label)
        ax.plot(results[0].distances, results[0].chance[target], linestyle=":", color="grey",
                label="chance (majority class)")
        ax.set_title(results[0].titles[target], fontsize=10)
        ax.set_xlabel("turns of small talk since the introduction")
        ax.set_xticks(results[0].distances)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("linear probe accuracy (held-out conversations)")
    axes[-1].legend(loc="lower left", fontsize=8)
    fig.suptitle("What the state remembers: a linear probe reads the referent from the carried state",
                 fontsize=11)
    return fig


#: The readout's two classes that are not people: grey tones (light: nobody, dark: a stranger).
READOUT_GREYS = ("#c8c8c8", "#6e6e6e")


def _person_colours(used: list[int]) -> dict[int, str]:
    """A colour per class: grey tones for nobody and a stranger, a qualitative colour for each
    person who appears (in the order of the facts file, so a person keeps a colour)."""
    colours = {0: READOUT_GREYS[0], 1: READOUT_GREYS[1]}
    # Grey is for the classes that are not people, orange shades the replies.
    taken = {to_rgb("tab:gray"), to_rgb("tab:orange")}
    palette = [c for c in matplotlib.colormaps["tab10"].colors if tuple(c) not in taken]
    people = [k for k in sorted(set(used)) if k >= 2]
    for n, k in enumerate(people):
        colours[k] = to_hex(palette[n % len(palette)])
    return colours


@plain_text()
def readout_figure(turns, stateless, labels: list[str], probs: list[torch.Tensor],
                   probs_stateless: list[torch.Tensor], title: str) -> Figure:
    """Who the referent head reads "he" and "she" as, character by character: one band per
    pronoun, coloured by the likeliest class (a colour per person, grey for nobody and a stranger),
    its opacity the probability; above, the conversation with the carried state, below, the same
    questions each asked from a zeroed state. `probs[t]` is turn t's (steps, 2, classes)."""
    from matplotlib.patches import Patch

    runs = [(turns, torch.cat(probs)), (stateless, torch.cat(probs_stateless))]
    best = [p.max(-1) for _, p in runs]  # (values, indices), each (steps, 2)
    used = [int(k) for _, i in best for k in i.flatten().unique()]
    colours = _person_colours(used)
    n = max(len(p) for _, p in runs)
    fig = Figure(figsize=(_width(n), 4.6))
    axes = fig.subplots(2, 1)
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=1.0 / w, right=1 - 0.8 / w, top=1 - 0.9 / h, bottom=0.4 / h, hspace=0.55)
    _title(fig, title + ": who the referent head reads \"he\" and \"she\" as (opacity: probability; "
                        "replies shaded orange)")
    names = ("carried state", "zeroed before every turn")
    for ax, (run, _), (p, idx), name in zip(axes, runs, best, names):
        table = torch.tensor([to_rgb(colours.get(k, READOUT_GREYS[0])) for k in range(len(labels))])
        rgba = torch.cat([table[idx.t()], p.t().unsqueeze(-1)], -1)  # (2, steps, 4)
        ax.imshow(rgba.numpy(), aspect="auto", interpolation="nearest", extent=(-0.5, len(p) - 0.5, 1.5, -0.5))
        ax.set_yticks([0, 1], ["he", "she"], fontsize=9)
        ax.set_ylim(1.5, -0.5)
        ax.axhline(0.5, color="white", linewidth=1.5)
        ax.set_ylabel(name, fontsize=8)
        _conversation_axis(run, [ax])
        ax.set_xlim(-0.5, n - 0.5)  # both runs on one scale, so a column is a character in both
    handles = [Patch(color=colours[k], label=labels[k]) for k in sorted(colours) if k in set(used) or k < 2]
    fig.legend(handles=handles, loc="upper right", ncol=min(len(handles), 6), fontsize=8, frameon=False,
               bbox_to_anchor=(1 - 0.8 / w, 1 - 0.35 / h))
    return fig
