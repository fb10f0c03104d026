"""What ``dalle eval`` reports: its headline against the embedded model's targets, the printed
tables, the part a bundle's card keeps, and the JSON file.

``model/evaluation/evaluate.py`` measures and returns a JSON-ready dict; everything here reads that
dict (also as read back from ``--json``), so a report can be printed or summarised again later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model.files import write_text

SPLITS = ("seen", "heldout")
READINGS = ("first", "reranked", "any")  # three readings of each caption's candidates

# the embedded model's targets (issue 17; codebook usage from issue 3), checked in the printed
# table. The ceiling figures are the scorer on the tokenizer's own reconstructions: what the
# transformer could reach if it drew every token right.
TARGETS = {
    "psnr_db": 30.0,
    "codebook_usage": 0.5,
    "ceiling_one_object": 0.95,
    "ceiling_all": 0.85,
    "one_object": 0.90,
    "two_objects_relation": 0.75,
    "counts": 0.80,
    "heldout_pairs": 0.50,
    "completion": 0.80,
}

Row = tuple[str, ...]


def _accuracy(table: dict, *keys) -> float | None:
    for key in keys:
        if table is None:
            return None
        table = table.get(key) if isinstance(table, dict) else None
    return table


def headline(report: dict[str, Any]) -> dict[str, float | None]:
    """The figures the targets are set for, read from the full report."""
    seen, heldout = report["seen"], report["heldout"]
    reranked = seen["caption"]["reranked"]
    one = reranked["by_objects"].get(1) or reranked["by_objects"].get("1")
    recon = seen["reconstruction"]
    by_objects = recon.get("caption_right_by_objects") or {}
    return {
        "psnr_db": recon["psnr_db"],
        "codebook_usage": recon["codebook_usage"],
        "ceiling_one_object": by_objects.get(1, by_objects.get("1")),
        "ceiling_all": recon.get("caption_right"),
        "one_object": one["accuracy"] if one else None,
        "two_objects_relation": reranked["two_objects_relation"]["accuracy"],
        "counts": _accuracy(reranked, "by_fact", "count", "accuracy"),
        "heldout_pairs": heldout["caption"]["reranked"]["by_heldout"]["heldout"]["accuracy"],
        "completion": seen["completion"]["reranked"]["accuracy"],
    }


# -- the printed table -------------------------------------------------------------------------


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _rate(summary: dict | None) -> str:
    """A sub-group's accuracy with how many it was measured on: small groups are noisy."""
    if not summary or summary.get("accuracy") is None:
        return "—"
    right = round(summary["accuracy"] * summary["n"])
    return f"{_pct(summary['accuracy'])} ({right}/{summary['n']})"


def _reconstruction_rows(s: dict, h: dict) -> list[Row]:
    """The image tokenizer's rows, and bits per image token."""
    rs, rh = s["reconstruction"], h["reconstruction"]
    rows = [
        ("tokenizer PSNR (dB)", f"{rs['psnr_db']:.2f}", f"{rh['psnr_db']:.2f}"),
        (
            "codes used",
            f"{rs['codes_used']} ({_pct(rs['codebook_usage'])})",
            f"{rh['codes_used']} ({_pct(rh['codebook_usage'])})",
        ),
    ]
    if "caption_right" in rs:
        rows.append(
            (
                "caption right on tokenizer reconstructions",
                _pct(rs["caption_right"]),
                _pct(rh["caption_right"]),
            )
        )
        one = [r["caption_right_by_objects"] for r in (rs, rh)]
        rows.append(("  1 object(s)", *(_pct(by.get(1, by.get("1"))) for by in one)))
    rows.append(
        (
            "bits per image token",
            f"{s['bits_per_image_token']:.3f}",
            f"{h['bits_per_image_token']:.3f}",
        )
    )
    return rows


def _reranked_rows(sc: dict, hc: dict) -> list[Row]:
    """The reranked reading broken down: by object count, relation, fact and held-out pair."""
    rows = [
        (f"  {n} object(s)", _rate(sc["by_objects"][n]), _rate(hc["by_objects"].get(n, {})))
        for n in sorted(sc["by_objects"], key=int)
    ]
    rows.append(
        (
            "  two objects with a relation",
            _rate(sc["two_objects_relation"]),
            _rate(hc["two_objects_relation"]),
        )
    )
    for fact in ("count", "place", "relation", "background"):
        rows.append((f"  fact: {fact}", _rate(sc["by_fact"][fact]), _rate(hc["by_fact"][fact])))
    rows.append(("  captions naming a held-out pair", "—", _rate(hc["by_heldout"]["heldout"])))
    return rows


def _fidelity_rows(s: dict, h: dict, samples: int) -> list[Row]:
    """Caption fidelity read three ways (the reranked reading broken down), then completion."""
    rows = []
    names = ("first sample", f"best of {samples}, reranked", f"any of {samples}")
    for reading, name in zip(READINGS, names, strict=True):
        sc, hc = s["caption"][reading], h["caption"][reading]
        rows.append((f"caption right, {name}", _pct(sc["accuracy"]), _pct(hc["accuracy"])))
        if reading == "reranked":
            rows += _reranked_rows(sc, hc)
    for reading, name in zip(READINGS, ("first sample", "reranked", "any"), strict=True):
        rows.append(
            (
                f"completion right, {name}",
                _pct(s["completion"][reading]["accuracy"]),
                _pct(h["completion"][reading]["accuracy"]),
            )
        )
    rows.append(
        (
            "completion kept region identical",
            _pct(s["completion"]["kept_region_identical"]),
            _pct(h["completion"]["kept_region_identical"]),
        )
    )
    return rows


def _target_lines(found: dict[str, float | None]) -> list[str]:
    """Each headline figure against its target: met, missed or not measured."""
    lines = ["targets (issue 17):"]
    for key, target in TARGETS.items():
        value = found.get(key)
        if value is None:
            mark = "not measured"
        else:
            mark = "met" if value >= target else "missed"
        shown = f"{value:.2f}" if key == "psnr_db" and value is not None else _pct(value)
        goal = f"{target:.0f} dB" if key == "psnr_db" else _pct(target)
        lines.append(f"  {key}: {shown} (target ≥ {goal}) {mark}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of the report, one row per figure, seen and held-out side by side."""
    s, h = report["seen"], report["heldout"]
    rows = [("figure", "seen", "held-out pairs")]
    rows += _reconstruction_rows(s, h)
    rows += _fidelity_rows(s, h, report["config"]["samples"])
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines += _target_lines(report["headline"])
    lines.append(f"{report['seconds']:.0f} s")
    return "\n".join(lines)


def format_folder_report(report: dict[str, Any]) -> str:
    """``dalle eval --data``'s report as name-value lines."""
    recon = report["reconstruction"]
    rows = [
        ("pairs measured", f"{report['pairs']} of {report['pairs_in_folder']}"),
        ("tokenizer PSNR (dB)", f"{recon['psnr_db']:.2f}"),
        ("codes used", f"{recon['codes_used']} ({_pct(recon['codebook_usage'])})"),
        ("code perplexity", f"{recon['code_perplexity']:.1f}"),
        ("bits per image token", f"{report['bits_per_image_token']:.3f}"),
    ]
    found = report.get("retrieval")
    if found and found["pairs"]:
        rows.append(
            (
                f"reranker: image finds its caption among {found['group']}",
                _pct(found["image_to_caption"]),
            )
        )
        rows.append(
            (
                f"reranker: caption finds its image among {found['group']}",
                _pct(found["caption_to_image"]),
            )
        )
    width = max(len(name) for name, _ in rows)
    lines = [f"{report['folder']}  ({report['bundle'] or 'unnamed bundle'})"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append("caption fidelity: not measured (it needs scenes; run dalle eval without --data)")
    return "\n".join(lines)


# -- what is kept --------------------------------------------------------------------------------


def card_summary(report: dict[str, Any], examples: int = 12) -> dict[str, Any]:
    """What a bundle's card keeps of a report: the headline, the main rows, example captions."""
    keep = {}
    for split in SPLITS:
        section = report[split]
        keep[split] = {
            "reconstruction": section["reconstruction"],
            "bits_per_image_token": section["bits_per_image_token"],
            "caption": {k: section["caption"][k]["accuracy"] for k in READINGS},
            "completion": {k: section["completion"][k]["accuracy"] for k in READINGS},
        }
    right = report["seen"]["caption"]["right_captions"]
    shortest_first = sorted(right, key=len)
    return {
        "headline": report["headline"],
        "config": report["config"],
        **keep,
        "example_captions": shortest_first[:examples],
    }


def write_json(report: dict[str, Any], path: Path) -> Path:
    """Write the report atomically (``model.files``)."""
    return write_text(path, json.dumps(report, indent=1, default=str) + "\n")
