"""The oracle pointer replays a synthetic scene's ground-truth points."""
from __future__ import annotations

import dataclasses

import pytest

from videomolmo_ros.data.synthetic import Scene, generate_scene
from videomolmo_ros.pointers.base import Pointer
from videomolmo_ros.pointers.oracle import OraclePointer


@pytest.fixture(scope="module")
def scene() -> Scene:
    return generate_scene(5, num_frames=16)


def test_is_a_pointer_and_encode_is_the_stamp(scene: Scene) -> None:
    oracle = OraclePointer(scene)
    assert isinstance(oracle, Pointer)
    assert oracle.encode(scene.frame(3)) == scene.stamp_ns(3)


def test_answers_with_ground_truth_points(scene: Scene) -> None:
    oracle = OraclePointer(scene)
    queries = [e.text for e in scene.expressions]
    for t in (0, 7, 15):
        frame = scene.frame(t)
        answers = oracle.point(frame, oracle.encode(frame), [], queries)
        assert len(answers) == len(queries)
        for expression, points in zip(scene.expressions, answers):
            assert points == scene.points_for(expression.object_ids, t, label=expression.text)
            for point in points:
                assert point.label == expression.text


def test_query_matching_ignores_case_and_spaces(scene: Scene) -> None:
    oracle = OraclePointer(scene)
    expression = next(e for e in scene.expressions if e.object_ids)
    t = next(t for t in range(scene.num_frames)
             if scene.points_for(expression.object_ids, t))
    query = f"  {expression.text.upper()} "
    (points,) = oracle.point(scene.frame(t), None, [], [query])
    assert [(p.x, p.y) for p in points] == \
        [(p.x, p.y) for p in scene.points_for(expression.object_ids, t)]
    assert all(p.label == query for p in points)


def test_unknown_query_or_stamp_gives_no_points(scene: Scene) -> None:
    oracle = OraclePointer(scene)
    known = scene.expressions[0].text
    frame = scene.frame(2)
    assert oracle.point(frame, None, [], ["the pink elephant", known])[0] == []
    assert oracle.point(frame, None, [], []) == []
    late = dataclasses.replace(frame, stamp_ns=scene.stamp_ns(scene.num_frames + 5))
    assert oracle.point(late, None, [], [known]) == [[]]


def test_zero_count_expression_gives_no_points(scene: Scene) -> None:
    oracle = OraclePointer(scene)
    empty = [e.text for e in scene.expressions if not e.object_ids]
    assert empty
    assert oracle.point(scene.frame(0), None, [], empty) == [[] for _ in empty]


def test_slivers_get_no_point():
    """An object with only a few visible pixels is not pointed at (see OraclePointer)."""
    import numpy as np
    from videomolmo_ros.data.synthetic import SceneConfig, make_scene
    from videomolmo_ros.pointers.oracle import OraclePointer

    scene = make_scene(SceneConfig(seed=0, num_frames=41))
    expression = scene.find_expression("the circle")
    oracle = OraclePointer(scene, min_visible_pixels=20)
    areas = [int(scene.masks[t, expression.object_ids[0]].sum()) for t in range(41)]
    sliver = next(t for t, area in enumerate(areas) if 0 < area < 20)
    assert scene.points_for(expression.object_ids, sliver)  # ground truth has the sliver
    assert oracle.point(scene.frame(sliver), None, [], [expression.text]) == [[]]
    big = int(np.argmax(areas))
    assert len(oracle.point(scene.frame(big), None, [], [expression.text])[0]) == 1
