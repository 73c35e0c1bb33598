"""KeyframeSchedule: keyframes every k frames; features only where the temporal module reads."""
import pytest

from videomolmo_ros.core.schedule import KeyframeSchedule, history_indices


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


def test_strided_history_indices():
    assert history_indices(20, 4, 4) == [16, 12, 8, 4]
    assert history_indices(10, 4, 4) == [6, 2]  # frames before 0 do not exist
    assert history_indices(7, 3, 1) == [6, 5, 4]
    assert history_indices(5, 0, 3) == []
    s = KeyframeSchedule(k=10, l=4, stride=3)
    assert s.history_indices(30) == [27, 24, 21, 18] and s.reach == 12


def test_strided_history_may_reach_past_the_previous_keyframe():
    # keyframe 20 reads 16, 12, 8, 4: 8 and 4 lie before keyframe 10 and must be kept too
    s = KeyframeSchedule(k=10, l=4, stride=4)
    assert [i for i in range(11) if s.needs_features(i)] == [0, 2, 4, 6, 8, 10]
    assert not s.needs_features(1) and not s.needs_features(3)


@pytest.mark.parametrize("k,l,stride", [(10, 4, 1), (10, 4, 4), (5, 3, 2), (3, 4, 5), (1, 2, 3),
                                        (7, 0, 2), (4, 6, 1)])
def test_needs_features_is_exactly_keyframes_and_their_histories(k, l, stride):  # noqa: E741
    s = KeyframeSchedule(k=k, l=l, stride=stride)
    horizon = 60
    wanted = {i for key in range(0, horizon + s.reach + 1, k)
              for i in [key] + s.history_indices(key) if i <= horizon}
    assert {i for i in range(horizon + 1) if s.needs_features(i)} == wanted


@pytest.mark.parametrize("k,l,stride", [(0, 4, 1), (-1, 4, 1), (10, -1, 1), (10, 4, 0)])
def test_invalid_parameters(k, l, stride):  # noqa: E741
    with pytest.raises(ValueError):
        KeyframeSchedule(k, l, stride)


def test_non_integer_parameters_rejected():
    with pytest.raises(TypeError):
        KeyframeSchedule(2.5, 4)


def test_negative_index_rejected():
    s = KeyframeSchedule(k=10, l=4)
    for method in (s.is_keyframe, s.needs_features, s.next_keyframe, s.previous_keyframe):
        with pytest.raises(ValueError):
            method(-1)
