"""Evaluation outputs a person reads: plot data for ``dvc plots``, PNG plots, and a self-contained HTML report.

The HTML embeds its PNGs (base64) and loads nothing from a CDN, so it renders offline.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Sequence


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_rows(doc: dict) -> list[dict]:
    """Flat rows (system, strength, control, ppl, distinct_2) for ``dvc plots`` and the PNGs."""
    rows = []
    for name, sysdoc in doc["systems"].items():
        for r in sysdoc["rows"]:
            rows.append({"system": name, "strength": r["strength"], "control": round(r["control"], 4),
                         "ppl": round(r["ppl"], 3), "distinct_2": round(r["distinct_2"], 4)})
    return rows


def plot_data(doc: dict) -> dict[str, str]:
    """``control.csv`` (strength → control) and ``fluency.csv`` (control ↔ perplexity) for dvc plots."""
    rows = plot_rows(doc)
    out = {}
    for fname in ("control.csv", "fluency.csv"):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["system"])
        w.writeheader()
        w.writerows(rows)
        out[fname] = buf.getvalue()
    return out


def _png(fig, ax) -> bytes:
    """The figure with its legend, as PNG bytes (and closed: pyplot keeps every open figure)."""
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _figure_png(doc: dict, x: str, y: str, title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    for name, sysdoc in doc["systems"].items():
        rows = sorted(sysdoc["rows"], key=lambda r: r["strength"])
        ax.plot([r[x] for r in rows], [r[y] for r in rows], marker="o", label=name)
        if y == "control" and x == "strength":
            lows = [r.get("ci", {}).get("control", [r[y], r[y]])[0] for r in rows]
            highs = [r.get("ci", {}).get("control", [r[y], r[y]])[1] for r in rows]
            ax.fill_between([r[x] for r in rows], lows, highs, alpha=0.15)
    if y == "ppl":
        ax.axhline(doc["base"]["ppl"], color="grey", ls="--", lw=1, label="base")
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} ({doc['control']})" if y == "control" else y)
    ax.set_title(title)
    return _png(fig, ax)


def frontier_points(doc: dict, system: str) -> list[tuple[float, float]]:
    """A system's (perplexity increase, control gained) per strength magnitude, starting at (0, 0): the gain is the
    ±s swing where −s was evaluated too (two-sided sentiment), else control at +s minus the base's; the perplexity
    increase is the worse of the two sides. Methods compare by these curves at equal perplexity, whatever their
    strength units (an LM-Steer s and an ActAdd multiplier mean different things)."""
    rows = {float(r["strength"]): r for r in doc["systems"][system]["rows"]}
    base = doc["base"]["control"]
    out = [(0.0, 0.0)]
    for s in sorted(x for x in rows if x > 0):
        plus, minus = rows[s], rows.get(-s)
        if minus is None:
            out.append((plus["ppl_increase"], plus["control"] - base))
        else:
            out.append((max(plus["ppl_increase"], minus["ppl_increase"]), plus["control"] - minus["control"]))
    return out


def _frontier_png(doc: dict, budget: float | None) -> bytes:
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    for name in doc["systems"]:
        pts = frontier_points(doc, name)
        if len(pts) > 1:
            ax.plot([100 * x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
    if budget is not None:
        ax.axvline(100 * budget, color="grey", ls="--", lw=1, label=f"budget +{budget:.0%}")
    ax.set_xlabel("judge perplexity increase (%)")
    ax.set_ylabel("swing (+s − −s)" if doc["control"] == "sentiment" else "control gained over base")
    ax.set_title("control vs perplexity: each method's frontier")
    return _png(fig, ax)


def png_figures(doc: dict, budget: float | None = None) -> dict[str, bytes]:
    """strength → control, control ↔ perplexity, and each method's frontier (control gained vs perplexity
    increase, with the budget) as PNGs."""
    return {
        "control.png": _figure_png(doc, "strength", "control", "control by strength"),
        "fluency.png": _figure_png(doc, "control", "ppl", "control vs judge perplexity"),
        "frontier.png": _frontier_png(doc, budget),
    }


def render_html(steer_name: str, doc: dict, samples: Sequence, pngs: dict[str, bytes], per_cell: int = 3) -> str:
    """A standalone HTML report: headline, per-strength tables, plots and sample generations."""
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>steer {e(steer_name)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}.s{color:#555}</style>",
             f"<h1>Steer <code>{e(steer_name)}</code></h1>",
             f"<p>control: <b>{e(doc['control'])}</b> (scorer {e(doc['scorer'])}), judge LM {e(str(doc['judge']))}; "
             f"protocol {e(json.dumps(doc['protocol']))}</p>"]
    for name, sysdoc in doc["systems"].items():
        rec = sysdoc["recommended"]
        strength = f"{rec['strength']:g}" + (f" (− side {rec['strength_minus']:g})" if "strength_minus" in rec else "")
        parts.append(f"<h2>{e(name)}</h2><p>recommended strength <b>{strength}</b>: {e(rec['reason'])}</p>")
        search = sysdoc.get("search")
        if search and search.get("probes"):
            parts.append(f"<p class=s>strength search: {search['rounds']} round(s) added "
                         f"{', '.join(f'{p:g}' for p in sorted(search['probes']))} to the grid ({e(search['method'])})</p>")
        cols = ["strength", "control", "ppl", "ppl_increase", "distinct_1", "distinct_2", "distinct_3"]
        parts.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "<th>95% CI control</th></tr>")
        for r in sysdoc["rows"]:
            ci = r.get("ci", {}).get("control")
            cells = "".join(f"<td>{r.get(c, float('nan')):.3f}</td>" for c in cols)
            parts.append(f"<tr>{cells}<td>{'' if not ci else f'[{ci[0]:.2f}, {ci[1]:.2f}]'}</td></tr>")
        parts.append("</table>")
    for name, data in pngs.items():
        parts.append(f"<img alt='{e(name)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>")
    parts.append("<h2>Samples</h2>")
    cells: dict[tuple, list] = {}
    for s in samples:
        cells.setdefault((s.system, s.strength), []).append(s)
    for (system, strength), group in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        parts.append(f"<h3>{e(system)} @ {strength:g}</h3><ul>")
        for s in group[:per_cell]:
            parts.append(f"<li><b>{e(s.prompt)}</b>{e(s.text)} <span class='s'>(control {s.control:.2f}, "
                         f"ppl {s.ppl:.1f})</span></li>")
        parts.append("</ul>")
    return "\n".join(parts)
