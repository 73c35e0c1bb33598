"""KeyframeSchedule: keyframes every k frames; features only where the temporal module reads."""
import pytest

from videomolmo_ros.core.schedule import KeyframeSchedule


def test_keyframes():
    s = KeyframeSchedule(k=10, l=4)
    assert [i for i in range(35) if s.is_keyframe(i)] == [0, 10, 20, 30]


def test_needs_features_k10_l4():
    s = KeyframeSchedule(k=10, l=4)
    assert [i for i in range(31) if s.needs_features(i)] == [
        0, 6, 7, 8, 9, 10, 16, 17, 18, 19, 20, 26, 27, 28, 29, 30]


def test_needs_features_l0_only_keyframes():
    s = KeyframeSchedule(k=5, l=0)
    assert [i for i in range(16) if s.needs_features(i)] == [0, 5, 10, 15]


def test_needs_features_l_at_least_k_minus_1_means_every_frame():
    for l in (4, 5, 9):  # noqa: E741
        s = KeyframeSchedule(k=5, l=l)
        assert all(s.needs_features(i) for i in range(30))
    s = KeyframeSchedule(k=5, l=3)
    assert not s.needs_features(1)


def test_k1_every_frame_is_a_keyframe():
    s = KeyframeSchedule(k=1, l=4)
    assert all(s.is_keyframe(i) and s.needs_features(i) for i in range(10))
    assert s.next_keyframe(7) == 7 and s.previous_keyframe(7) == 7


def test_next_and_previous_keyframe():
    s = KeyframeSchedule(k=10, l=4)
    assert [s.next_keyframe(i) for i in (0, 1, 9, 10, 11, 20)] == [0, 10, 10, 10, 20, 20]
    assert [s.previous_keyframe(i) for i in (0, 1, 9, 10, 11, 29)] == [0, 0, 0, 10, 10, 20]


def test_history_indices():
    s = KeyframeSchedule(k=10, l=4)
    assert s.history_indices(20) == [19, 18, 17, 16]
    assert s.history_indices(0) == []
    assert KeyframeSchedule(k=2, l=4).history_indices(2) == [1, 0]
    assert all(s.needs_features(i) for i in s.history_indices(30))
    with pytest.raises(ValueError):
        s.history_indices(5)


@pytest.mark.parametrize("k,l", [(0, 4), (-1, 4), (10, -1)])
def test_invalid_parameters(k, l):  # noqa: E741
    with pytest.raises(ValueError):
        KeyframeSchedule(k, l)


def test_non_integer_parameters_rejected():
    with pytest.raises(TypeError):
        KeyframeSchedule(2.5, 4)


def test_negative_index_rejected():
    s = KeyframeSchedule(k=10, l=4)
    for method in (s.is_keyframe, s.needs_features, s.next_keyframe, s.previous_keyframe):
        with pytest.raises(ValueError):
            method(-1)
