#!/usr/bin/env python3
"""Turns the JSON of a fault campaign (`transplant faults --json`) into an SVG bar chart: one
stacked bar per fault kind, split by what caught the fault. No third-party modules.

    scripts/plot-faults.py campaign.json campaign.svg
"""
import json
import sys
from html import escape

CATEGORIES = [
    ("detected_by_error", "detected: error / crash / timeout", "#4e79a7"),
    ("detected_by_check", "detected: time-traveling check", "#59a14f"),
    ("detected_by_probation", "detected: probation after the cut-over", "#76b7b2"),
    ("harmless", "undetected, harmless", "#bab0ac"),
    ("harmful_uncovered", "undetected, harmful (new-only state)", "#f28e2b"),
    ("harmful_covered", "undetected, harmful (covered state)", "#e15759"),
    ("not_applicable", "no place to strike", "#eeeeee"),
]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        c = json.load(f)
    kinds = sorted(c["by_kind"].items())
    width, bar_h, gap, left, top = 900, 22, 8, 230, 60
    legend_h = 24 * ((len(CATEGORIES) + 1) // 2)
    height = top + len(kinds) * (bar_h + gap) + 40 + legend_h
    plot_w = width - left - 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="15">'
        f'{escape(str(c["totals"]["runs"]))} injected faults, seed {c["seed"]}: what caught each '
        f'(old process survived every run: {"yes" if c["old_survived_all"] else "NO"})</text>',
        f'<text x="{width / 2}" y="44" text-anchor="middle" fill="#555">'
        f'share of runs per kind; {escape(c["to"].split("/")[-1])}, process {c["pid"]}</text>',
    ]
    for i, (name, t) in enumerate(kinds):
        y = top + i * (bar_h + gap)
        runs = max(t["runs"], 1)
        out.append(
            f'<text x="{left - 8}" y="{y + bar_h * 0.7}" text-anchor="end">'
            f'{escape(name)} ({t["runs"]})</text>'
        )
        x = left
        for key, label, color in CATEGORIES:
            w = plot_w * t[key] / runs
            if w > 0:
                out.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}">'
                    f'<title>{escape(label)}: {t[key]}</title></rect>'
                )
            x += w
    y = top + len(kinds) * (bar_h + gap) + 20
    for j, (key, label, color) in enumerate(CATEGORIES):
        lx = left + (j % 2) * (plot_w / 2)
        ly = y + (j // 2) * 24
        out.append(f'<rect x="{lx}" y="{ly}" width="14" height="14" fill="{color}" stroke="#999"/>')
        out.append(f'<text x="{lx + 20}" y="{ly + 12}">{escape(label)} ({c["totals"][key]})</text>')
    out.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
