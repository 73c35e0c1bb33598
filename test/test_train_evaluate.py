"""Held-out scoring: perfect answers score 1, empty answers score only the zero-count queries."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from videomolmo_ros.core.points import Point
from videomolmo_ros.data.synthetic import SceneConfig, make_scene
from videomolmo_ros.pointers.oracle import OraclePointer
from videomolmo_ros.train.evaluate import (RandomPointer, contradicted_attributes,
                                         evaluate_pointer, format_table, keyframes, main,
                                         named_attributes, nearest_object, nearest_object_hits,
                                         needs_motion, points_inside, spatial_form,
                                         target_phrase)

SCENE = {"width": 128, "height": 96, "num_frames": 10}


class Silent:
    """Never points."""

    history_frames = 4

    def encode(self, frame):
        return None

    def point(self, frame, features, history, queries):
        return [[] for _ in queries]


def test_keyframes_spread_over_the_clip():
    assert keyframes(48, 3, 4) == [4, 26, 47]
    assert keyframes(5, 3, 10) == [4]


def test_nearest_object_hits_names_the_nearest_centre():
    centres = {0: np.array([10.0, 10.0]), 3: np.array([50.0, 10.0])}
    hits = nearest_object_hits([(12.0, 10.0), (45.0, 13.0)], centres, referents=[3])
    assert [hit for hit, _ in hits] == [False, True]
    assert [d for _, d in hits] == pytest.approx([2.0, np.hypot(5, 3)])
    assert nearest_object_hits([(1.0, 1.0)], {}, [0]) == []


def test_nearest_object_names_the_id_and_distance():
    centres = {4: np.array([0.0, 0.0]), 7: np.array([10.0, 0.0])}
    assert nearest_object(8.0, 0.0, centres) == (7, pytest.approx(2.0))
    assert nearest_object(3.0, 4.0, centres) == (4, pytest.approx(5.0))


def test_target_phrase_keeps_only_the_words_about_the_referent():
    assert target_phrase("the star left of the red square") == "star"
    assert target_phrase("the object above the blue star") == "object"
    assert target_phrase("the large red circle below the dotted square") == "large red circle"
    assert target_phrase("the leftmost red circle") == "red circle"
    assert target_phrase("the striped star") == "striped star"


def test_contradicted_attributes_names_the_words_an_object_lacks():
    star = SimpleNamespace(color="blue", shape="star", size="small", texture="plain")
    assert contradicted_attributes(star, "red star") == ["colour"]
    assert contradicted_attributes(star, "blue stars") == []
    assert contradicted_attributes(star, "object") == []
    assert sorted(contradicted_attributes(star, "large striped red circle")) == [
        "colour", "shape", "size", "texture"]


class PointAt:
    """Answers every query with one fixed point."""

    history_frames = 0

    def __init__(self, x: float, y: float) -> None:
        self.xy = (x, y)

    def encode(self, frame):
        return None

    def point(self, frame, features, history, queries):
        return [[Point(*self.xy)] for _ in queries]


def test_wrong_picks_of_attribute_queries_always_contradict_a_word():
    """An attribute query describes its referent uniquely, so any other object the point lands
    nearest to lacks one of its words: fits_words is 0. Spatial forms are summarised too."""
    seeds = [11, 12, 13]
    result = evaluate_pointer(PointAt(SCENE["width"] / 2, SCENE["height"] / 2), seeds, 2,
                              scene=SCENE)
    picks = result["attribute"]["wrong_picks"]
    assert picks["points"] > 0 and picks["fits_words"] == 0.0
    assert set(picks["contradicts"]) <= {"colour", "shape", "size", "texture"}
    assert max(picks["contradicts"].values()) > 0
    for form in result["spatial"]["by_form"].values():
        summary = form["wrong_picks"]
        assert summary["points"] == 0 or 0.0 <= summary["fits_words"] <= 1.0
    assert "attribute wrong picks" in format_table(result)


def test_shape_queries_are_split_by_the_referents_size():
    """Every point of an attribute query that names a shape is counted once, under its
    referent's size (here a pointer that always answers the frame's centre)."""
    result = evaluate_pointer(PointAt(SCENE["width"] / 2, SCENE["height"] / 2), [11, 12, 13, 14],
                              2, scene=SCENE)
    attribute = result["attribute"]
    by_size = attribute["shape_nr_by_size"]
    assert set(by_size) <= {"small", "large"} and by_size
    assert sum(v["points"] for v in by_size.values()) == \
        attribute["nearest_referent_by_attribute"]["shape"]["points"]
    assert all(0.0 <= v["nearest_referent"] <= 1.0 for v in by_size.values())
    assert "NR by the referent's size" in format_table(result)


def test_points_inside_reads_the_pixel_under_each_point():
    masks = np.zeros((2, 10, 20), bool)
    masks[0, 2:4, 5:8] = True
    masks[1, 8, 18] = True
    points = [(6.2, 2.6), (17.6, 7.8), (4.4, 3.0), (25.0, 3.0), (-1.0, 8.0)]
    assert points_inside(points, masks) == [True, True, False, False, False]


def test_named_attributes_reads_the_vocabulary_of_the_scenes():
    assert named_attributes("the large striped red circle") == ["colour", "shape", "size",
                                                                  "texture"]
    assert named_attributes("all the squares") == ["shape"]
    assert named_attributes("the topmost object") == []


def test_spatial_form_tells_superlatives_from_relations():
    assert spatial_form("the leftmost red circle") == "superlative"
    assert spatial_form("the Topmost object") == "superlative"
    assert spatial_form("the star left of the red square") == "relation"


def test_needs_motion_when_the_appearance_words_fit_several_objects():
    scene = make_scene(SceneConfig(seed=3, num_objects=(4, 4), twin_prob=1.0))
    objects = scene.objects
    twin = objects[1]  # copies the colour and shape of an earlier object
    assert needs_motion(f"the {twin.color} {twin.shape} moving left", objects)
    assert needs_motion("the static object", objects)
    alone = SceneConfig(seed=0, num_objects=(1, 1))
    single = make_scene(alone).objects
    assert not needs_motion(f"the static {single[0].shape}", single)


def test_motion_queries_only_motion_can_answer_are_scored_apart():
    scene_config = {**SCENE, "twin_prob": 1.0, "num_objects": (3, 4)}
    seeds = range(11, 15)
    oracle = evaluate_pointer(OraclePointer(make_scene(SceneConfig(seed=11, **scene_config)),
                                            min_visible_pixels=1), [11], 2, scene=scene_config)
    assert oracle["motion"]["needs_motion"]["f1"] == pytest.approx(1.0)
    assert oracle["motion"]["needs_motion"]["queries"] > 0
    assert "fit several objects" in format_table(oracle)
    silent = evaluate_pointer(Silent(), seeds, 2, scene=scene_config)
    assert silent["motion"]["needs_motion"]["f1"] == 0.0


def test_oracle_scores_one():
    scene = make_scene(SceneConfig(seed=11, **SCENE))
    result = evaluate_pointer(OraclePointer(scene, min_visible_pixels=1), [11], 2, scene=SCENE)
    for kind in ("attribute", "counting", "all"):
        assert result[kind]["f1"] == pytest.approx(1.0)
    assert result["counting"]["ema"] == 1.0 and result["counting"]["mae"] == 0.0
    assert result["attribute"]["nearest_referent"] >= 0.9
    assert result["attribute"]["error_px"] < 8
    assert result["attribute"]["inside_given_nr"] == 1.0  # its points lie on their masks
    forms = result["spatial"]["by_form"]
    assert sum(v["queries"] for v in forms.values()) == result["spatial"]["queries"]
    assert all(v["f1"] == pytest.approx(1.0) for v in forms.values())
    assert "spatial by form" in format_table(result)
    assert "in|NR" in format_table(result)
    named = result["attribute"]["nearest_referent_by_attribute"]
    assert named and all(v["nearest_referent"] >= 0.9 and v["points"] > 0
                         for v in named.values())
    assert "attribute NR by what the query names" in format_table(result)
    by_size = result["attribute"]["shape_nr_by_size"]
    assert by_size and all(v["nearest_referent"] >= 0.9 for v in by_size.values())
    assert "counting" in format_table(result) and "NR" in format_table(result)


def test_silence_scores_only_zero_counts():
    result = evaluate_pointer(Silent(), [11], 2, scene=SCENE)
    assert result["distinct_answers"] < 0.5  # the same (empty) answer to every query
    scene = make_scene(SceneConfig(seed=11, **SCENE))
    ts = keyframes(scene.num_frames, 2, 4)
    zero = [not scene.masks[t, list(e.object_ids)].any() if e.object_ids else True
            for t in ts for e in scene.expressions if e.kind == "counting"]
    assert result["counting"]["ema"] == pytest.approx(sum(zero) / len(zero))
    assert result["counting"]["f1"] == pytest.approx(sum(zero) / len(zero))


class Recorder:
    """Points nowhere; remembers which features it got as keyframe and as history."""

    history_frames = 3

    def __init__(self):
        self.calls = []

    def encode(self, frame):
        return object()

    def point(self, frame, features, history, queries):
        self.calls.append((features, list(history)))
        return [[] for _ in queries]


def test_still_history_repeats_the_keyframe_and_video_history_does_not():
    video, still = Recorder(), Recorder()
    evaluate_pointer(video, [11], 2, scene=SCENE)
    evaluate_pointer(still, [11], 2, scene=SCENE, history="still")
    assert len(video.calls) == len(still.calls) == 2
    for (key_v, past_v), (key_s, past_s) in zip(video.calls, still.calls):
        assert len(past_v) == len(past_s) == 3
        assert all(h is key_s for h in past_s)
        assert all(h is not key_v for h in past_v) and len({id(h) for h in past_v}) == 3
    with pytest.raises(ValueError, match="history"):
        evaluate_pointer(Recorder(), [11], 2, scene=SCENE, history="shuffled")


class FrameRecorder(Recorder):
    """Features are the frame index, so the history says which frames were read."""

    history_stride = 2

    def encode(self, frame):
        return frame.index


def test_video_history_follows_the_pointers_stride():
    pointer = FrameRecorder()
    evaluate_pointer(pointer, [11], 2, scene=SCENE, first_keyframe=6)
    keyframe, history = pointer.calls[0]
    assert keyframe == 6 and history == [4, 2, 0]


def test_none_accuracy_counts_silence_on_zero_count_queries():
    silent = evaluate_pointer(Silent(), [11], 2, scene=SCENE)
    chance = evaluate_pointer(RandomPointer(seed=3), [11], 2, scene=SCENE)
    assert silent["counting"]["zero_queries"] == chance["counting"]["zero_queries"] > 0
    assert silent["counting"]["none_accuracy"] == 1.0
    assert chance["counting"]["none_accuracy"] == 0.0  # random points always point
    assert "no referent answered with no point: 0.00" in format_table(chance)


def test_chance_is_far_below_the_oracle_and_counts_one():
    scene = make_scene(SceneConfig(seed=11, **SCENE))
    oracle = evaluate_pointer(OraclePointer(scene, min_visible_pixels=1), [11], 2, scene=SCENE)
    chance = evaluate_pointer(RandomPointer(seed=3), [11], 2, scene=SCENE)
    assert chance["all"]["queries"] == oracle["all"]["queries"]
    assert chance["distinct_answers"] == 1.0  # random points never coincide
    assert "distinct answers" in format_table(chance)
    assert chance["all"]["f1"] < 0.5 * oracle["all"]["f1"]
    assert chance["all"]["nearest_referent"] < 0.8 * oracle["all"]["nearest_referent"]
    ts = keyframes(scene.num_frames, 2, 4)
    ones = [int(scene.masks[t, list(e.object_ids)].any(axis=(1, 2)).sum()) == 1
            for t in ts for e in scene.expressions if e.kind == "counting"]
    assert chance["counting"]["ema"] == pytest.approx(sum(ones) / len(ones))


def test_cli_refuses_a_bad_scene_with_a_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["some-model", "--scene", '{"not_a_field": 1}'])
    assert exit_info.value.code == 2
    assert "--scene" in capsys.readouterr().err


def test_cli_refuses_a_missing_model_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "no-such-model")])
    assert exit_info.value.code == 2
    assert "cannot load the model" in capsys.readouterr().err
