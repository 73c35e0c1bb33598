"""Held-out pointing scores of a trained model on synthetic scenes (no ROS, no engine).

For each scene (seeds below ``TRAIN_SEED_OFFSET``, never trained on) and each of a few
keyframes t, every expression of the scene is asked with ``VideoMolmoPointer.point``, the
keyframe's history being the features of frames t-s, .., t-l*s (most recent first; s = 1 but for
a model trained with a history stride; the pointer pads
with black frames at the start, as the engine does). Scores, per query then averaged per kind:

* point precision / recall / F1 against the visible referents' masks (Molmo protocol,
  ``core.metrics.point_precision_recall_f1``; no referent and no point = 1, 1, 1);
* for counting queries, exact-match accuracy and mean absolute error of the number of points
  (``core.metrics.counting_metrics``), and ``none_accuracy``: of the queries whose answer is
  "There are none." (no visible referent), the fraction answered with no point;
* two diagnostics that tell *which object* from *how precisely*: ``nearest_referent``, the
  fraction of points whose nearest visible object (by mask centre) is a referent of the query
  (the query was understood, even when the point misses the mask), and ``error_px``, the median
  distance of those points to that referent's mask centre (the pointing precision), and
  ``inside_given_nr``, the fraction of those points that lie inside a referent's mask (below 1:
  points land beside the right object; near 1: a miss means the wrong object was chosen);
* for attribute queries, ``nearest_referent`` again per attribute the query names (colour,
  shape, size, texture; a query naming two counts for both): which words the model binds to
  what it sees, and which it ignores; ``shape_nr_by_size``, the same for the queries that
  name a shape, split by the referent's size (a small object spans about one patch at
  168 px: is shape lost to resolution, or on large objects too?); for spatial queries, F1
  and ``nearest_referent`` per form (a superlative, "the leftmost circle", or a relation to
  an anchor, "the star left of the red square");
* ``wrong_picks`` for attribute queries and per spatial form: of the points whose nearest
  object is not the referent, the fraction whose object contradicts each attribute word of
  the target's own phrase ("star" in "the star left of the red square"), and the fraction
  that contradicts none (``fits_words``: for a spatial query, the relation or the extreme
  was what failed). It tells a model that misreads words from one that misreads geometry.

``history="still"`` feeds the keyframe's own features as every history frame: the scene as if
nothing had moved. A model whose motion answers come from its temporal module loses them there;
one that guesses motion from a single frame does not (an ablation at inference time, next to the
trained single-frame twin).

CLI: ``python -m videomolmo_ros.train.evaluate MODEL_DIR --scenes 10 [--history still]``.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from typing import Any, Sequence

import numpy as np

from videomolmo_ros.core.metrics import (counting_metrics, point_in_mask,
                                         point_precision_recall_f1)
from videomolmo_ros.core.points import Point
from videomolmo_ros.core.schedule import history_indices
from videomolmo_ros.data.synthetic import (COLORS, KINDS, RELATIONS, SHAPES, SIZES, SUPERLATIVES,
                                           TEXTURES, SceneConfig, make_scene)

DEFAULT_EVAL_SEEDS = range(900_000, 900_000 + 10)  # held out: below the training seed range
HISTORIES: tuple[str, ...] = ("video", "still")


class RandomPointer:
    """Chance level: one uniformly random point per query (what the table's scores mean
    without a model; for counting it always answers one)."""

    history_frames = 0

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def encode(self, frame: Any) -> None:
        return None

    def point(self, frame: Any, features: Any, history: Any, queries: Sequence[str]) -> list:
        height, width = frame.image.shape[:2]
        return [[Point(float(self.rng.uniform(0, width)), float(self.rng.uniform(0, height)))]
                for _ in queries]


def nearest_object(x: float, y: float, centres: dict[int, np.ndarray]) -> tuple[int, float]:
    """The id of the object (id -> (x, y) centre) nearest to a point, and its distance."""
    ids = list(centres)
    distances = np.hypot(*(np.stack([centres[i] for i in ids]) - (x, y)).T)
    nearest = int(np.argmin(distances))
    return ids[nearest], float(distances[nearest])


def nearest_object_hits(points: Sequence[tuple[float, float]], centres: dict[int, np.ndarray],
                        referents: Sequence[int]) -> list[tuple[bool, float]]:
    """Per point: (is the nearest of ``centres`` (object id -> (x, y)) a referent, distance to
    that nearest centre in pixels). Empty without centres."""
    if not centres:
        return []
    return [(oid in referents, distance)
            for oid, distance in (nearest_object(x, y, centres) for x, y in points)]


ATTRIBUTE_WORDS: dict[str, frozenset[str]] = {
    "colour": frozenset(COLORS), "shape": frozenset(SHAPES) | {s + "s" for s in SHAPES},
    "size": frozenset(SIZES), "texture": frozenset(TEXTURES)}


def points_inside(points: Sequence[tuple[float, float]], masks: np.ndarray) -> list[bool]:
    """Per (x, y) point: does it hit any of ``masks`` (K, H, W), by the rule the F1 uses?"""
    return [any(point_in_mask(x, y, mask) for mask in masks) for x, y in points]


def named_attributes(text: str) -> list[str]:
    """The attributes (``ATTRIBUTE_WORDS`` keys) whose words appear in a query."""
    words = set(text.lower().split())
    return [name for name, vocabulary in ATTRIBUTE_WORDS.items() if words & vocabulary]


def target_phrase(text: str) -> str:
    """The words that describe the referent itself: a relation's anchor ("... left of the red
    square") and a superlative's word ("leftmost") dropped, the leading "the" too."""
    words = text.lower().split()
    phrase = " ".join(words[1:] if words[:1] == ["the"] else words)
    for relation in RELATIONS:
        phrase = phrase.split(f" {relation} ")[0]
    return " ".join(w for w in phrase.split() if w not in SUPERLATIVES)


def contradicted_attributes(obj: Any, phrase: str) -> list[str]:
    """The attributes (``ATTRIBUTE_WORDS`` keys) whose word in ``phrase`` the object does not
    have ("the red star" for a blue star: ["colour"])."""
    values = {"colour": obj.color, "shape": obj.shape, "size": obj.size, "texture": obj.texture}
    out = []
    for word in phrase.lower().split():
        for name, vocabulary in ATTRIBUTE_WORDS.items():
            singular = word[:-1] if name == "shape" and word.endswith("s") else word
            if word in vocabulary and singular != values[name] and name not in out:
                out.append(name)
    return out


def _wrong_pick_summary(contradictions: Sequence[list[str]]) -> dict[str, Any]:
    """{"points", "fits_words", "contradicts": {attribute: fraction}} over wrong picks."""
    n = len(contradictions)
    counts = Counter(name for names in contradictions for name in names)
    return {"points": n,
            "fits_words": float(np.mean([not names for names in contradictions])) if n else None,
            "contradicts": {name: counts[name] / n for name in ATTRIBUTE_WORDS if counts[name]}}


_APPEARANCE_WORDS = frozenset(COLORS) | frozenset(SHAPES)  # what motion phrases name


def spatial_form(text: str) -> str:
    """"superlative" ("the leftmost circle") or "relation" ("the star left of the square")."""
    return "superlative" if set(text.lower().split()) & set(SUPERLATIVES) else "relation"


def needs_motion(text: str, objects: Sequence[Any]) -> bool:
    """Whether a motion query's colour and shape words fit several objects of its scene, so
    that only the motion words can pick the referent (a frame alone cannot answer it)."""
    named = set(text.lower().split()) & _APPEARANCE_WORDS
    fitting = [o for o in objects if all(word in (o.color, o.shape) for word in named)]
    return len(fitting) > 1


def keyframes(num_frames: int, count: int, first: int) -> list[int]:
    """``count`` keyframes spread evenly over [first, num_frames - 1]."""
    first = min(first, num_frames - 1)
    return sorted({int(round(v)) for v in np.linspace(first, num_frames - 1, count)})


def evaluate_pointer(pointer: Any, seeds: Sequence[int] = DEFAULT_EVAL_SEEDS,
                     keyframes_per_scene: int = 3, scene: dict[str, Any] | None = None,
                     kinds: Sequence[str] = KINDS, first_keyframe: int = 4,
                     history: str = "video") -> dict[str, Any]:
    """Scores per kind: {"attribute": {"precision", "recall", "f1", "queries"}, ...,
    "counting": {... + "ema", "mae", "none_accuracy", "zero_queries"}, "motion": {... +
    "needs_motion": {"f1", "queries"} over the queries only motion can answer}, "all": {...},
    "distinct_answers", "seconds": wall time}.

    history: "video" (frames t-s, t-2s, .., t-l*s; s is the pointer's ``history_stride``) or
    "still" (the keyframe itself, l times).

    distinct_answers: per keyframe, the number of different answers over the number of queries
    (mean over keyframes): 1/n for a model that answers every query of a frame alike, i.e.
    does not read the query; near 1 when it does (most queries name different objects).
    """
    if history not in HISTORIES:
        raise ValueError(f"history must be one of {HISTORIES}, not {history!r}")
    started = time.perf_counter()
    per_kind: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    counts: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))  # pred, gt
    history_frames = getattr(pointer, "history_frames", 4)
    history_stride = getattr(pointer, "history_stride", 1)
    distinct: list[float] = []  # per keyframe: distinct answers / queries
    nearest: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    placed: dict[str, list[bool]] = defaultdict(list)  # per NR point: inside a referent mask
    by_word: dict[str, list[tuple[bool, float]]] = defaultdict(list)  # attribute queries
    # attribute queries that name a shape, by the referent's size: is shape misread only
    # where an object spans about one patch (a resolution limit) or on large ones too?
    shape_by_size: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    by_form: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))  # spatial: scores, hits
    motion_only: list[tuple[float, float, float]] = []  # motion queries a frame cannot answer
    wrong: dict[str, list[list[str]]] = defaultdict(list)  # attribute/form: contradicted words
    for seed in seeds:
        synthetic = make_scene(SceneConfig(**{**(scene or {}), "seed": int(seed)}))
        expressions = [e for e in synthetic.expressions if e.kind in kinds]
        if not expressions:
            continue
        features: dict[int, Any] = {}

        def encoded(i: int) -> Any:
            if i not in features:
                features[i] = pointer.encode(synthetic.frame(i))
            return features[i]

        for t in keyframes(synthetic.num_frames, keyframes_per_scene, first_keyframe):
            previous = history_indices(t, history_frames, history_stride)
            context = [encoded(t) if history == "still" else encoded(i) for i in previous]
            answers = pointer.point(synthetic.frame(t), encoded(t), context,
                                    [e.text for e in expressions])
            distinct.append(len({tuple((round(p.x), round(p.y)) for p in points)
                                 for points in answers}) / len(answers))
            centres = {oid: np.argwhere(mask).mean(0)[::-1]  # (x, y)
                       for oid, mask in enumerate(synthetic.masks[t]) if mask.any()}
            for expression, points in zip(expressions, answers):
                visible = [oid for oid in expression.object_ids if synthetic.masks[t, oid].any()]
                xy = [(p.x, p.y) for p in points]
                form = spatial_form(expression.text) if expression.kind == "spatial" else None
                if visible:
                    hits = nearest_object_hits(xy, centres, visible)
                    nearest[expression.kind] += hits
                    inside = points_inside(xy, synthetic.masks[t, visible])
                    placed[expression.kind] += [on for (hit, _), on in zip(hits, inside) if hit]
                    if expression.kind == "attribute":
                        named = named_attributes(expression.text)
                        for name in named:
                            by_word[name] += hits
                        if "shape" in named:  # one referent: a unique description
                            shape_by_size[synthetic.objects[visible[0]].size] += hits
                    if form:
                        by_form[form][1].extend(hits)
                    if expression.kind == "attribute" or form:
                        phrase = target_phrase(expression.text)
                        wrong[form or "attribute"] += [
                            contradicted_attributes(
                                synthetic.objects[nearest_object(x, y, centres)[0]], phrase)
                            for (hit, _), (x, y) in zip(hits, xy) if not hit]
                scores = point_precision_recall_f1(xy, [synthetic.masks[t, oid]
                                                        for oid in visible])
                if form:
                    by_form[form][0].append(scores)
                per_kind[expression.kind].append(scores)
                if expression.kind == "motion" and needs_motion(expression.text,
                                                                synthetic.objects):
                    motion_only.append(scores)
                predicted, truth = counts[expression.kind]
                predicted.append(len(points))
                truth.append(len(visible))
    result: dict[str, Any] = {}
    everything: list[tuple[float, float, float]] = []
    for kind, scores in per_kind.items():
        array = np.asarray(scores)
        result[kind] = {"precision": float(array[:, 0].mean()), "recall": float(array[:, 1].mean()),
                        "f1": float(array[:, 2].mean()), "queries": len(scores)}
        if kind == "counting":
            predicted, truth = counts[kind]
            ema, mae = counting_metrics(predicted, truth)
            silent = [p == 0 for p, n in zip(predicted, truth) if n == 0]
            result[kind].update(ema=ema, mae=mae, zero_queries=len(silent),
                                none_accuracy=float(np.mean(silent)) if silent else None)
        result[kind].update(_nearest_summary(nearest[kind], placed[kind]))
        if kind == "motion" and motion_only:
            result[kind]["needs_motion"] = {"f1": float(np.asarray(motion_only)[:, 2].mean()),
                                            "queries": len(motion_only)}
        if kind == "spatial":
            result[kind]["by_form"] = {
                form: {"f1": float(np.asarray(form_scores)[:, 2].mean()),
                       "queries": len(form_scores), **_nearest_summary(form_hits),
                       "wrong_picks": _wrong_pick_summary(wrong[form])}
                for form, (form_scores, form_hits) in sorted(by_form.items())}
        if kind == "attribute":
            result[kind]["wrong_picks"] = _wrong_pick_summary(wrong["attribute"])
            result[kind]["nearest_referent_by_attribute"] = _grouped_summary(
                by_word, ATTRIBUTE_WORDS)
            result[kind]["shape_nr_by_size"] = _grouped_summary(shape_by_size, SIZES)
        everything += scores
    if everything:
        array = np.asarray(everything)
        result["all"] = {"precision": float(array[:, 0].mean()),
                         "recall": float(array[:, 1].mean()), "f1": float(array[:, 2].mean()),
                         "queries": len(everything)}
        result["all"].update(_nearest_summary([h for hits in nearest.values() for h in hits],
                                              [p for flags in placed.values() for p in flags]))
    if distinct:
        result["distinct_answers"] = float(np.mean(distinct))
    result["seconds"] = time.perf_counter() - started
    return result


def _nearest_summary(hits: Sequence[tuple[bool, float]],
                     placed: Sequence[bool] | None = None) -> dict[str, Any]:
    """nearest_referent (fraction), error_px (median, over the points near a referent) and,
    given ``placed`` (per such point: inside a referent mask), inside_given_nr."""
    on_referent = [distance for hit, distance in hits if hit]
    summary = {"nearest_referent": float(np.mean([hit for hit, _ in hits])) if hits else None,
               "error_px": float(np.median(on_referent)) if on_referent else None}
    if placed is not None:
        summary["inside_given_nr"] = float(np.mean(placed)) if len(placed) else None
    return summary


def _grouped_summary(hits: dict[str, list[tuple[bool, float]]],
                     groups: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``_nearest_summary`` and the number of points of each group that has points, in the
    order of ``groups``."""
    return {group: {**_nearest_summary(hits[group]), "points": len(hits[group])}
            for group in groups if hits[group]}


def _grouped_nr(groups: dict[str, dict[str, Any]]) -> str:
    """'name NR (points), ...' for the table."""
    return ", ".join(f"{name} {v['nearest_referent']:.2f} ({v['points']})"
                     for name, v in groups.items())


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of ``evaluate_pointer``'s result (NR: nearest_referent, in|NR:
    inside_given_nr, err: error_px)."""
    lines = [f"{'kind':<10} {'queries':>7} {'P':>6} {'R':>6} {'F1':>6} {'EMA':>6} {'MAE':>6} "
             f"{'NR':>6} {'in|NR':>6} {'err px':>6}"]
    for kind in list(KINDS) + ["all"]:
        if kind not in result:
            continue
        r = result[kind]
        ema = f"{r['ema']:.3f}" if "ema" in r else "-"
        mae = f"{r['mae']:.3f}" if "mae" in r else "-"
        near = f"{r['nearest_referent']:.3f}" if r.get("nearest_referent") is not None else "-"
        error = f"{r['error_px']:.1f}" if r.get("error_px") is not None else "-"
        placed = f"{r['inside_given_nr']:.3f}" if r.get("inside_given_nr") is not None else "-"
        lines.append(f"{kind:<10} {r['queries']:>7} {r['precision']:>6.3f} {r['recall']:>6.3f} "
                     f"{r['f1']:>6.3f} {ema:>6} {mae:>6} {near:>6} {placed:>6} {error:>6}")
    named = result.get("attribute", {}).get("nearest_referent_by_attribute")
    if named:
        lines.append("attribute NR by what the query names: " + _grouped_nr(named))
    by_size = result.get("attribute", {}).get("shape_nr_by_size")
    if by_size:
        lines.append("attribute queries naming a shape, NR by the referent's size: "
                     + _grouped_nr(by_size))
    forms = result.get("spatial", {}).get("by_form")
    if forms:
        lines.append("spatial by form: " + ", ".join(
            f"{form} F1 {v['f1']:.3f} NR "
            + (f"{v['nearest_referent']:.2f}" if v["nearest_referent"] is not None else "-")
            + f" ({v['queries']})" for form, v in forms.items()))
    picks = [("attribute", result.get("attribute", {}).get("wrong_picks"))] + [
        (f"spatial {form}", v.get("wrong_picks")) for form, v in (forms or {}).items()]
    for name, summary in picks:
        if summary and summary["points"]:
            lines.append(f"{name} wrong picks ({summary['points']}): fit the target's words "
                         f"{summary['fits_words']:.2f}, contradict " + (", ".join(
                             f"{a} {f:.2f}" for a, f in summary["contradicts"].items()) or "-"))
    motion = result.get("motion", {}).get("needs_motion")
    if motion:
        lines.append(f"motion queries whose colour and shape words fit several objects: "
                     f"F1 {motion['f1']:.3f} ({motion['queries']})")
    counting = result.get("counting", {})
    if counting.get("none_accuracy") is not None:
        lines.append(f"counting queries with no referent answered with no point: "
                     f"{counting['none_accuracy']:.2f} ({counting['zero_queries']})")
    if "distinct_answers" in result:
        lines.append(f"distinct answers per keyframe: {result['distinct_answers']:.2f} of the "
                     "queries (1/n = the query is ignored)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from videomolmo_ros.model.pointer import VideoMolmoPointer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a trained model directory (release layout + tokenizer)")
    parser.add_argument("--scenes", type=int, default=10, help="held-out scenes")
    parser.add_argument("--first-seed", type=int, default=DEFAULT_EVAL_SEEDS[0])
    parser.add_argument("--keyframes", type=int, default=3, help="keyframes per scene")
    parser.add_argument("--scene", default="{}",
                        help="JSON object of SceneConfig overrides (default: the standard scenes)")
    parser.add_argument("--history", choices=HISTORIES, default="video",
                        help="still: every history frame is the keyframe (nothing moves)")
    parser.add_argument("--chance", action="store_true",
                        help="also score random points on the same queries")
    parser.add_argument("--json", help="also write the scores here")
    args = parser.parse_args(argv)
    try:
        scene = json.loads(args.scene)
        SceneConfig(**scene)
    except (ValueError, TypeError) as error:
        parser.error(f"--scene: {error}")
    seeds = range(args.first_seed, args.first_seed + args.scenes)
    try:
        pointer = VideoMolmoPointer.from_pretrained(args.model, max_new_tokens=120)
    except (OSError, ValueError) as error:
        parser.error(f"cannot load the model {args.model!r}: {error}")
    results = {"model": evaluate_pointer(pointer, seeds, args.keyframes, scene,
                                         history=args.history)}
    if args.chance:
        results["chance"] = evaluate_pointer(RandomPointer(), seeds, args.keyframes, scene)
    for name, result in results.items():
        print(f"{name} ({result['seconds']:.1f} s)")
        print(format_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results if args.chance else results["model"], handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
