"""Draws a Grafana dashboard's panels from a Prometheus's data with matplotlib: the picture
of what users get, before they install Grafana (README, `cargo xtask dashboard-picture`).

Each panel sits where its `gridPos` puts it; a stat panel shows its last value, a time
series panel every target's lines with the legend Grafana would show. Queries go to the
Prometheus HTTP API with every node and provider selected."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BG, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLOURS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ffcb7d"]


def concrete(expr: str, step: int) -> str:
    return (expr.replace("$__rate_interval", f"{max(4 * step, 15)}s").replace("$__range", "5m")
            .replace("$node", ".*").replace("$provider", ".*"))


def api(port: int, path: str, **params) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=20) as r:
        return json.loads(r.read())


def legend(fmt: str, labels: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() or "value"


def fmt_value(v: float, unit: str) -> str:
    if v != v:  # NaN
        return "—"
    if unit == "currencyUSD":
        return f"${v:,.4f}" if v < 1 else f"${v:,.2f}"
    if unit == "percentunit":
        return f"{100 * v:.1f}%"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    suffix = {"reqps": " req/s", "ops": " ops/s", "cps": " conn/s"}.get(unit, "")
    return f"{v:,.3g}{suffix}"


def draw(port: int, dashboard: dict, out: Path, start: float, end: float, step: int = 2) -> Path:
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(20, rows * 0.42 + 0.8), facecolor=BG)
    fig.suptitle(dashboard["title"], color=TEXT, x=0.01, ha="left", fontsize=15)
    top = 1 - 0.8 / (rows * 0.42 + 0.8)
    for p in panels:
        g = p["gridPos"]
        # Room on the left of each panel for its y-axis labels.
        left, width = g["x"] / 24 + 0.028, g["w"] / 24 - 0.034
        height = g["h"] / rows * top - 0.03
        bottom = top - (g["y"] + g["h"]) / rows * top + 0.006
        ax = fig.add_axes((left, bottom, width, height), facecolor=PANEL)
        ax.set_title(p["title"], color=TEXT, fontsize=9, loc="left")
        for side in ax.spines.values():
            side.set_color(GRID)
        unit = p["fieldConfig"]["defaults"].get("unit", "")
        if p["type"] == "stat":
            r = api(port, "query", query=concrete(p["targets"][0]["expr"], step), time=end)
            values = [float(s["value"][1]) for s in r["data"]["result"]]
            text = fmt_value(sum(values), unit) if values else "No data"
            ax.text(0.5, 0.45, text, color=COLOURS[0] if values else TEXT, fontsize=20,
                    ha="center", va="center", transform=ax.transAxes, weight="bold")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        n = 0
        for t in p["targets"]:
            r = api(port, "query_range", query=concrete(t["expr"], step), start=start, end=end,
                    step=step)
            for series in r["data"]["result"]:
                xs = [float(x) - start for x, _ in series["values"]]
                ys = [float(y) for _, y in series["values"]]
                ax.plot(xs, ys, color=COLOURS[n % len(COLOURS)], linewidth=1.2,
                        label=legend(t.get("legendFormat", ""), series["metric"]))
                n += 1
        if n:
            ax.legend(fontsize=6, loc="upper left", facecolor=PANEL, edgecolor=GRID,
                      labelcolor=TEXT, ncol=2)
        else:
            ax.text(0.5, 0.5, "No data", color=TEXT, ha="center", va="center", transform=ax.transAxes)
        ax.tick_params(colors=TEXT, labelsize=6)
        ax.grid(color=GRID, linewidth=0.5)
        ax.set_xlabel("seconds", color=TEXT, fontsize=6)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=BG)
    plt.close(fig)
    return out
