"""Markdown tables of evaluation results, shaped like the VideoMolmo paper's tables.

Table 1/2 shape: one row per model (here: per mask kind) with J, F and J&F of a dataset, in
percent with one decimal. Table 4 shape (several groups, e.g. VPoS-Bench subsets): J, F, J&F
per group side by side. Points (P/R/F1) and counting (MAE, EMA) get their own small tables.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal ("-" when missing)."""
    return "-" if value is None else f"{100.0 * value:.1f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> str:
    """A GitHub Markdown table; columns from ``right_from`` on are right-aligned."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_markdown(title: str, model: str, summary: Mapping[str, Any],
                     groups: Mapping[str, Mapping[str, Any]] | None = None,
                     settings: str = "") -> str:
    """The summary report: dataset table, then groups, points and counting when present."""
    parts = [f"## {title}", "",
             f"{summary['videos']} videos, {summary['expressions']} expressions, "
             f"{summary['frames']} frames" + (f"; {settings}" if settings else "") + ". "
             "J, F, J&F, precision, recall, F1 and EMA in %.", ""]
    rows = [[f"{model}, {kind} masks", pct(_get(summary, kind, "J")),
             pct(_get(summary, kind, "F")), pct(_get(summary, kind, "JF"))]
            for kind in ("fused", "causal")]
    parts += [table(["Model", "J", "F", "J&F"], rows), ""]
    if groups and len(groups) > 1:
        names = list(groups)
        header = ["Model"] + [f"{name} {m}" for name in names for m in ("J", "F", "J&F")]
        group_rows = [[f"{model}, {kind} masks"]
                      + [pct(_get(groups[name], kind, m)) for name in names
                         for m in ("J", "F", "JF")]
                      for kind in ("fused", "causal")]
        parts += ["### Per group", "", table(header, group_rows), ""]
    points = summary.get("points")
    if points:
        parts += ["### Points (keyframes)", "",
                  table(["Model", "Precision", "Recall", "F1"],
                        [[model, pct(points["P"]), pct(points["R"]), pct(points["F1"])]]), ""]
    counting = summary.get("counting")
    if counting:
        parts += ["### Counting (keyframes)", "",
                  table(["Model", "MAE", "EMA"],
                        [[model, f"{counting['MAE']:.2f}", pct(counting["EMA"])]]), ""]
    return "\n".join(parts)


def videos_markdown(title: str, videos: Sequence[Mapping[str, Any]]) -> str:
    """One row per video: expressions, frames, fused and causal J&F, point F1, speed."""
    rows = []
    for video in videos:
        expressions = video["expressions"]
        rows.append([video["video_id"], str(len(expressions)), str(video["num_frames"]),
                     *(pct(_mean([e[k]["JF"] for e in expressions if e.get(k)]))
                       for k in ("fused", "causal")),
                     pct(_mean([e["fused"]["J"] for e in expressions if e.get("fused")])),
                     pct(_mean([e["fused"]["F"] for e in expressions if e.get("fused")])),
                     pct(_mean([e["points"]["F1"] for e in expressions if e.get("points")])),
                     f"{video.get('frames_per_second', 0.0):.1f}"])
    header = ["Video", "Expressions", "Frames", "J&F fused", "J&F causal", "J fused",
              "F fused", "Point F1", "Frames/s"]
    return "\n".join([f"## {title}: per video", "", table(header, rows), ""])


def _get(summary: Mapping[str, Any], kind: str, metric: str) -> float | None:
    scores = summary.get(kind)
    return None if not scores else scores.get(metric)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
