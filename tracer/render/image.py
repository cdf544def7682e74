"""Paint a Layout as a PNG with matplotlib (Agg). See docs/images.md for the picture's rules.

matplotlib is imported inside render_png so that `whodid` starts fast when no image is
asked for. Same trace and `now` in, same bytes out: no randomness, no timestamps in the file.
"""

from __future__ import annotations

import io
import textwrap

from ..trace import Trace
from .layout import PRIVILEGE, Box, Layout, layout

DPI = 100                    # pixels per inch of the PNG
LANE_W = 3.7                 # inches per host lane
MIN_W = 5.2                  # narrowest picture, so the title has room
MARGIN = 0.25
ROW_H = 0.62                 # a box and the space under it
BOX_H = 0.48
LABEL_H = 0.24               # extra room above a box whose incoming link carries a label
INDENT = 0.45                # context boxes sit this far right of the chain
CHAIN_X = 0.3                # the chain's spine, from the lane's left edge
BUS_X = 0.42                 # where context hangs off, from the lane's left edge

# Okabe-Ito: safe for the common colour-vision deficiencies.
BLACK, GREY, LIGHT = "#1a1a1a", "#6b6b6b", "#f4f4f4"
PERSON, MATCH, SSH, PRIV = "#009E73", "#D55E00", "#0072B2", "#CC79A7"
# a connection's other end (to:, from:, listen:) is drawn as an ssh hop's: the hop's blue
FILL = {"origin": "#d9f0e8", "poi": "#fbe3d6", "chain": "white", "context": LIGHT, "collapsed": "white",
        "destination": "#e3eff9"}
EDGE = {"origin": PERSON, "poi": MATCH, "chain": "#333333", "context": "#a0a0a0", "collapsed": "#a0a0a0",
        "destination": SSH}
LINK_COLOUR = {"fork": "#555555", "exec": "#555555", "ssh": SSH, "connect": SSH}
HOPS = ("ssh", "connect")    # drawn as an arrow across lanes
# How sure the person is, drawn so it reads without colour too: observed is the person's green
# and solid, inferred amber and dashed, unknown grey and dotted (nobody to colour in).
CONFIDENCE_COLOUR = {"observed": PERSON, "inferred": "#A86F00", "unknown": "#555555"}
CONFIDENCE_FILL = {"observed": "#d9f0e8", "inferred": "#fcefd2", "unknown": "#ececec"}
CONFIDENCE_DASH = {"observed": "-", "inferred": "--", "unknown": ":"}
MONO, SANS = "DejaVu Sans Mono", "DejaVu Sans"
# a shared session (tmux, screen, an ssh master): its own colour and a dashed box, so it reads
# as something other than a process of the chain without colour too
SHARED, SHARED_FILL = "#6A3D9A", "#f3eef8"
CLIENT_DASH = {"attached": "-", "injected": "--", "asked": "-"}


def figure_size(lay: Layout) -> tuple[float, float]:
    """(width, height) in inches - documented in docs/images.md, checked by the tests."""
    width = max(MIN_W, 2 * MARGIN + LANE_W * lay.columns)
    return width, _row_tops(lay)[-1] + _footer_height(lay, width)


def render_png(tr: Trace, now: float) -> bytes:
    return paint(layout(tr, now))


def paint(lay: Layout) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch, Rectangle

    width, height = figure_size(lay)
    fig = Figure(figsize=(width, height), dpi=DPI, facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)            # y grows downwards, in inches
    ax.axis("off")

    def put(*args, **kw):
        # recorded data is drawn as text: matplotlib would read `$...$` in a command as
        # mathematics (a malformed one raised, a well-formed one drew something else)
        return ax.text(*args, parse_math=False, **kw)

    tops = _row_tops(lay)
    body_top, body_bottom = HEADER, tops[-1]

    # header: what, who, when
    chars = int((width - 2 * MARGIN) * 72 / (0.6 * 15))
    level = confidence_of(lay)
    sure = CONFIDENCE_COLOUR[level]
    badge = lay.confidence_label or f"confidence: {level}"
    title = textwrap.shorten(lay.title, chars, placeholder="…")
    put(MARGIN, 0.22, title, fontsize=15, fontweight="bold", color=BLACK, family=SANS, va="top")
    # who, then how sure, right after it: the headline gives the badge room
    room = chars * 15 // 13.5 - len(badge) * 10 // 13.5 - 4
    who = put(MARGIN, 0.55, textwrap.shorten(lay.headline, max(12, int(room)), placeholder="…"), fontsize=13.5,
              fontweight="bold", color=sure, family=SANS, va="top")
    ax.annotate(badge, xy=(1, 0.5), xycoords=who, xytext=(10, 0), textcoords="offset points", fontsize=10,
                fontweight="bold", color=sure, family=SANS, ha="left", va="center", annotation_clip=False,
                bbox=dict(boxstyle="round,pad=0.3", fc=CONFIDENCE_FILL[level], ec=sure, lw=1.4,
                          ls=CONFIDENCE_DASH[level]))
    put(MARGIN, 0.86, lay.subtitle, fontsize=9.5, color=GREY, family=SANS, va="top")

    # lanes
    for i, host in enumerate(lay.lanes):
        x0 = MARGIN + i * LANE_W
        ax.add_patch(Rectangle((x0, body_top), LANE_W, body_bottom - body_top,
                               facecolor="#f7f7f7" if i % 2 == 0 else "white", edgecolor="#dddddd", lw=0.8))
        put(x0 + LANE_W / 2, body_top + 0.2, host, fontsize=11.5, fontweight="bold", color=BLACK,
                family=SANS, ha="center", va="center")

    if lay.sessions:
        x0 = MARGIN + lay.side * LANE_W
        ax.add_patch(Rectangle((x0, body_top), LANE_W, body_bottom - body_top, facecolor="white",
                               edgecolor="#dddddd", lw=0.8))
        put(x0 + LANE_W / 2, body_top + 0.2, SIDE_LANE, fontsize=11.5, fontweight="bold", color=SHARED,
            family=SANS, ha="center", va="center", style="italic")

    by_id = {b.id: b for b in lay.boxes}
    geo = {b.id: _geometry(b, tops) for b in lay.boxes}

    # links: straight chain segments and context elbows in collections, hops as arrows
    segments: dict[tuple[str, str, float], list] = {}
    heads: dict[str, list[tuple[float, float]]] = {}
    for link in lay.links:
        sx, sy, sw, sh = geo[link.src]
        dx, dy, dw, dh = geo[link.dst]
        src_box, dst_box = by_id[link.src], by_id[link.dst]
        colour = PRIV if link.kind in PRIVILEGE else LINK_COLOUR.get(link.kind, "#555555")
        style = ":" if link.inferred else "-"
        if link.kind in HOPS and src_box.lane != dst_box.lane:
            right = dst_box.lane > src_box.lane
            start = (sx + sw if right else sx, sy + sh / 2)
            end = (dx if right else dx + dw, dy + dh / 2)
            ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=16, color=SSH,
                                         lw=2.4, linestyle=style, shrinkA=0, shrinkB=1))
            mid = ((start[0] + end[0]) / 2, dy - LABEL_H / 2)
            if link.label:
                put(mid[0], mid[1] - 0.02, link.label, fontsize=9, color=SSH, fontweight="bold",
                        family=SANS, ha="center", va="center",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))
            if link.gap:
                put(start[0] + (0.1 if right else -0.1), sy + sh + 0.02, link.gap, fontsize=9.5,
                        style="italic", color=BLACK, family=SANS, ha="left" if right else "right", va="top")
            continue
        lane_x = MARGIN + dst_box.lane * LANE_W
        if link.chain:
            x = lane_x + CHAIN_X
            segments.setdefault((colour, style, 2.4 if link.kind in PRIVILEGE else 1.6), []).append(
                [(x, sy + sh), (x, dy)])
            heads.setdefault(colour, []).append((x, dy - 0.045))
            label_y = dy - LABEL_H / 2 - 0.04
            texts = [t for t in (link.label, link.gap) if t]
            if texts:
                put(x + 0.12, label_y, "  ·  ".join(texts), fontsize=9.5, family=SANS, va="center",
                        color=PRIV if link.label else BLACK, fontweight="bold" if link.label else "normal",
                        style="normal" if link.label else "italic")
        else:
            bus = lane_x + BUS_X
            segments.setdefault(("#a0a0a0", style, 1.0), []).append(
                [(bus, sy + sh), (bus, dy + dh / 2), (dx, dy + dh / 2)])
    for (colour, style, lw), segs in sorted(segments.items()):
        ax.add_collection(LineCollection(segs, colors=colour, linewidths=lw, linestyles=style, zorder=1))
    for colour, pts in sorted(heads.items()):
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="v", s=38, color=colour, zorder=3,
                   linewidths=0)

    # boxes
    for b in lay.boxes:
        x, y, w, h = geo[b.id]
        origin = b.role == "origin"
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.06",
                                    facecolor=CONFIDENCE_FILL[level] if origin else FILL[b.role],
                                    edgecolor=sure if origin else EDGE[b.role],
                                    lw={"poi": 2.8, "origin": 2.2}.get(b.role, 1.1),
                                    linestyle=CONFIDENCE_DASH[level] if origin else
                                    "--" if b.role == "collapsed" else "-", zorder=2))
        faded = b.role in ("context", "collapsed")
        put(x + 0.09, y + 0.16, b.title, fontsize=10.5 if not faded else 9.5, family=MONO,
                fontweight="bold" if b.role == "poi" else "normal", color=GREY if faded else BLACK,
                style="italic" if b.role == "collapsed" else "normal", va="center", zorder=4)
        put(x + 0.09, y + 0.35, b.meta, fontsize=8.5, family=SANS, color=GREY, va="center", zorder=4)
        if b.role == "poi":
            put(x + w - 0.08, y + 0.35, "MATCHED", fontsize=8.5, family=SANS, fontweight="bold",
                    color=MATCH, ha="right", va="center", zorder=4)
        if b.role == "origin":
            put(x, y - 0.06, lay.person, fontsize=10.5, fontweight="bold", color=sure,
                    family=SANS, va="bottom", zorder=4)

    _paint_sessions(ax, put, lay, geo, tops)

    # legend and notes
    handles = [Line2D([], [], color="#555555", lw=1.6, label="started (fork/exec)"),
               Line2D([], [], color=SSH, lw=2.4, label="ssh hop to another host"),
               Line2D([], [], color=PRIV, lw=2.4, label="change of user (sudo/su/setuid)"),
               Line2D([], [], color=BLACK, lw=1.6, linestyle=":", label="inferred, not observed"),
               Patch(facecolor=FILL["origin"], edgecolor=PERSON, lw=2, label="where the chain starts"),
               Patch(facecolor=FILL["poi"], edgecolor=MATCH, lw=2, label="matched command"),
               Patch(facecolor=LIGHT, edgecolor="#a0a0a0", label="context (wider scope)")]
    if any(b.role == "destination" for b in lay.boxes):
        handles.append(Patch(facecolor=FILL["destination"], edgecolor=SSH, lw=1.6,
                             label="connection's other end (address:port)"))
    if lay.sessions:
        handles.append(Patch(facecolor=SHARED_FILL, edgecolor=SHARED, lw=1.6, linestyle="--",
                             label="shared session and its clients"))
    ncol = 2 if width < 7.5 else 3
    legend_top = body_bottom + 0.12
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(MARGIN / width, 1 - legend_top / height),
              ncol=ncol, fontsize=8.5, frameon=False, handlelength=2.2, columnspacing=1.2, borderaxespad=0)
    legend_rows = -(-len(handles) // ncol)
    note_y = legend_top + legend_rows * 0.22 + 0.1
    for i, line in enumerate(candidate_lines(lay)):
        put(MARGIN, note_y, line, fontsize=9.5 if i == 0 else 9, color=sure if i == 0 else BLACK,
            fontweight="bold" if i == 0 else "normal", family=SANS, va="top")
        note_y += 0.2
    for note in lay.notes:
        put(MARGIN, note_y, note, fontsize=8.5, color=GREY, family=SANS, va="top", style="italic")
        note_y += 0.2

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    return buf.getvalue()


HEADER = 1.15                # title, headline, subtitle
LANE_HEAD = 0.42             # host names
ORIGIN_BADGE = 0.26          # "person: jim" over the origin box


def _row_tops(lay: Layout) -> list[float]:
    """The top of each row, in inches, with room above rows whose incoming link has a label;
    the last entry is where the body ends."""
    row_of = {b.id: b.row for b in lay.boxes}
    labelled = {row_of[lk.dst] for lk in lay.links if (lk.label or lk.gap) and (lk.chain or lk.kind == "connect")}
    origin_row = next((b.row for b in lay.boxes if b.role == "origin"), None)
    tops, y = [], HEADER + LANE_HEAD
    for row in range(lay.rows):
        if row in labelled:
            y += LABEL_H
        if row == origin_row:
            y += ORIGIN_BADGE
        tops.append(y)
        y += ROW_H
    tops.append(y + 0.05)
    return tops


def _footer_height(lay: Layout, width: float) -> float:
    ncol = 2 if width < 7.5 else 3
    return 0.12 + -(-legend_items(lay) // ncol) * 0.22 + 0.15 + 0.2 * (len(lay.notes) + len(candidate_lines(lay))) + 0.1


def legend_items(lay: Layout) -> int:
    return 7 + (1 if lay.sessions else 0)


def confidence_of(lay: Layout) -> str:
    return lay.confidence if lay.confidence in CONFIDENCE_COLOUR else "unknown"


def candidate_lines(lay: Layout) -> list[str]:
    """The footer's candidates: a heading, then one numbered line each."""
    if not lay.candidates:
        return []
    return ["Candidates (the person is unknown):"] + [
        c if c.startswith("+") else f"{i}. {c}" for i, c in enumerate(lay.candidates, 1)]


SIDE_LANE = "shared session"


def session_geometry(lay: Layout, tops: list[float]) -> dict[str, tuple[float, float, float, float]]:
    """Where the shared sessions' boxes go: the session's across the side lane, its clients
    indented under it (as context boxes hang off the chain)."""
    x0 = MARGIN + lay.side * LANE_W + 0.12
    out = {}
    for ss in lay.sessions:
        out[ss.id] = (x0, tops[ss.row], LANE_W - 0.24, BOX_H)
        for c in ss.clients:
            out[c.id] = (x0 + INDENT, tops[c.row], LANE_W - 0.24 - INDENT, BOX_H)
    return out


def session_paths(lay: Layout, geo: dict, tops: list[float]) -> list[tuple[str, str, list[tuple[float, float]]]]:
    """The lines of the shared sessions, as (from, to, points): from the chain step's box to its
    session's (straight across, or down the side lane's edge when the session sits lower), and
    from each client's box into its session's bottom, along the lane's bus."""
    out = []
    bus = MARGIN + lay.side * LANE_W + BUS_X
    edge_x = MARGIN + lay.side * LANE_W + 0.05
    for ss in lay.sessions:
        sx, sy, sw, sh = geo[ss.id]
        if ss.at in geo:
            x, y, w, h = geo[ss.at]
            a, b = (x + w, y + h / 2), (sx, sy + sh / 2)
            pts = [a, b] if abs(a[1] - b[1]) < 1e-6 else [a, (edge_x, a[1]), (edge_x, b[1]), b]
            out.append((ss.at, ss.id, pts))
        for c in ss.clients:
            if c.role == "more":
                continue
            cx, cy, cw, ch = geo[c.id]
            out.append((c.id, ss.id, [(cx, cy + ch / 2), (bus, cy + ch / 2), (bus, sy + sh)]))
    return out


def _paint_sessions(ax, put, lay: Layout, geo: dict, tops: list[float]) -> None:
    from matplotlib.patches import FancyBboxPatch
    from matplotlib.lines import Line2D

    geo = {**geo, **session_geometry(lay, tops)}
    role_of = {c.id: c.role for ss in lay.sessions for c in ss.clients}
    for src, dst, pts in session_paths(lay, geo, tops):
        dash = CLIENT_DASH.get(role_of.get(src, ""), "--")
        ax.add_line(Line2D([p[0] for p in pts], [p[1] for p in pts], color=SHARED, lw=1.6 if src in role_of else 1.4,
                           linestyle=dash, zorder=1))
        tip = pts[-1]
        # an arrowhead where the line meets the session: up into its bottom, or into its left side
        if src in role_of:
            ax.scatter([tip[0]], [tip[1] + 0.045], marker="^", s=38, color=SHARED, zorder=3, linewidths=0)
        else:
            ax.scatter([tip[0] - 0.045], [tip[1]], marker=">", s=38, color=SHARED, zorder=3, linewidths=0)
    for ss in lay.sessions:
        x, y, w, h = geo[ss.id]
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.06", facecolor=SHARED_FILL,
                                    edgecolor=SHARED, lw=1.8, linestyle="--", zorder=2))
        put(x + 0.09, y + 0.16, ss.title, fontsize=9.5, family=SANS, fontweight="bold",
            color=SHARED if ss.known else GREY, va="center", zorder=4)
        put(x + 0.09, y + 0.35, ss.meta, fontsize=8.5, family=SANS, color=GREY, va="center", zorder=4)
        for c in ss.clients:
            x, y, w, h = geo[c.id]
            if c.role == "more":
                put(x + 0.09, y + 0.16, c.title, fontsize=9.5, family=SANS, style="italic", color=GREY,
                    va="center", zorder=4)
                put(x + 0.09, y + 0.35, c.meta, fontsize=8.5, family=SANS, style="italic", color=GREY,
                    va="center", zorder=4)
                continue
            ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.06", facecolor="white",
                                        edgecolor=SHARED, lw=1.1, linestyle=CLIENT_DASH.get(c.role, "-"), zorder=2))
            put(x + 0.09, y + 0.16, c.title, fontsize=9.5, family=SANS, fontweight="bold" if c.known else "normal",
                color=BLACK if c.known else GREY, style="normal" if c.known else "italic", va="center", zorder=4)
            put(x + 0.09, y + 0.35, c.meta, fontsize=8.5, family=SANS, color=GREY, va="center", zorder=4)


def _geometry(b: Box, tops: list[float]) -> tuple[float, float, float, float]:
    x = MARGIN + b.lane * LANE_W + 0.12 + (INDENT if b.indent else 0)
    w = LANE_W - 0.24 - (INDENT if b.indent else 0)
    return x, tops[b.row], w, BOX_H

