"""parse_points / format_points / points_to_array: Molmo point text <-> pixel points."""
import numpy as np
import pytest

from videomolmo_ros.core.points import (
    NO_POINTS_TEXT, Point, format_points, parse_points, points_to_array)


def xy(points):
    return [(p.x, p.y) for p in points]


def test_single_point_release_conversion():
    # int(61.5 / 100 * 640) = 393, int(40.4 / 100 * 480) = 193 (truncation, like get_coords)
    points = parse_points('<point x="61.5" y="40.4" alt="mug">mug</point>', 640, 480)
    assert points == [Point(393.0, 193.0, "mug")]


def test_multiple_points_in_one_tag_keep_order():
    text = ('<points x1="10.0" y1="20.0" x2="50.5" y2="75.25" x3="99.9" y3="0" alt="cups">'
            'cups</points>')
    points = parse_points(text, 200, 100)
    assert xy(points) == [(20.0, 20.0), (101.0, 75.0), (199.0, 0.0)]
    assert {p.label for p in points} == {"cups"}


def test_several_tags_in_one_text():
    text = ('Here: <point x="10" y="10" alt="a">a</point> and '
            '<points x1="20" y1="20" x2="30" y2="30" alt="b">b</points>.')
    points = parse_points(text, 100, 100)
    assert [(p.x, p.y, p.label) for p in points] == [
        (10.0, 10.0, "a"), (20.0, 20.0, "b"), (30.0, 30.0, "b")]


def test_no_points():
    assert parse_points("There are none.", 640, 480) == []
    assert parse_points("", 640, 480) == []


def test_percent_100_is_clamped_to_last_pixel():
    assert xy(parse_points('<point x="100" y="100.0" alt="c">c</point>', 640, 480)) == [
        (639.0, 479.0)]
    assert xy(parse_points('<point x="0" y="0" alt="c">c</point>', 640, 480)) == [(0.0, 0.0)]


def test_label_from_alt_then_inner_text_then_argument():
    with_alt = '<point x="1" y="1" alt="red mug">mug</point>'
    assert parse_points(with_alt, 10, 10)[0].label == "red mug"
    assert parse_points('<point x="1" y="1">the mug</point>', 10, 10)[0].label == "the mug"
    assert parse_points('<point x="1" y="1"></point>', 10, 10, label="q")[0].label == "q"
    assert parse_points('<point x="1" y="1" alt="">x</point>', 10, 10)[0].label == "x"


@pytest.mark.parametrize("text", [
    "garbage <<<>>> \x00 \u2603",
    "<point",
    "<point x=",
    '<point x="12',
    '<point x="abc" y="10" alt="m">m</point>',
    '<point x="nan" y="10" alt="m">m</point>',
    '<point x="inf" y="10" alt="m">m</point>',
    '<point x="-5" y="10" alt="m">m</point>',
    '<point x="100.1" y="10" alt="m">m</point>',
    '<point x="1e1" y="10" alt="m">m</point>',
    '<point x="10" alt="m">m</point>',
    '<point y="10" alt="m">m</point>',
    '<points x1="10" y2="10" alt="m">m</points>',
    '<point x="" y="" alt="m">m</point>',
    "</point></points>",
])
def test_malformed_text_gives_no_points_and_never_raises(text):
    assert parse_points(text, 640, 480) == []


def test_invalid_point_is_dropped_others_kept():
    text = ('<points x1="10" y1="10" x2="150" y2="10" x3="20" y3="-1" x4="30" y4="30" alt="m">'
            'm</points>')
    assert xy(parse_points(text, 100, 100)) == [(10.0, 10.0), (30.0, 30.0)]


def test_unclosed_and_truncated_tags_keep_complete_points():
    assert xy(parse_points('<point x="50" y="50" alt="m">m', 100, 100)) == [(50.0, 50.0)]
    truncated = '<points x1="10" y1="20" x2="30" y2="4'
    assert xy(parse_points(truncated, 100, 100)) == [(10.0, 20.0)]


def test_pairs_by_suffix_not_by_position():
    text = '<points y2="40" x1="10" x2="30" y1="20" alt="m">m</points>'
    assert xy(parse_points(text, 100, 100)) == [(10.0, 20.0), (30.0, 40.0)]


def test_whitespace_and_quotes_tolerated():
    assert xy(parse_points('<point x = " 25.0 " y="75" alt="m">m</point>', 100, 100)) == [
        (25.0, 75.0)]


def test_non_positive_size_is_a_caller_error():
    with pytest.raises(ValueError):
        parse_points('<point x="1" y="1"></point>', 0, 10)


def test_format_zero_one_many():
    assert format_points([], 640, 480, "mug") == NO_POINTS_TEXT
    assert format_points([Point(320, 120)], 640, 480, "mug") == (
        '<point x="50.0" y="25.0" alt="mug">mug</point>')
    assert format_points([Point(64, 48), Point(640, 0)], 640, 480, "mugs") == (
        '<points x1="10.0" y1="10.0" x2="100.0" y2="0.0" alt="mugs">mugs</points>')


def test_format_escapes_label_and_round_trips_it():
    text = format_points([Point(1, 1)], 10, 10, 'the "big" <mug> & co')
    assert '"big"' not in text
    assert parse_points(text, 10, 10)[0].label == 'the "big" <mug> & co'


def test_format_rejects_non_finite():
    with pytest.raises(ValueError):
        format_points([Point(float("nan"), 1)], 10, 10, "m")


@pytest.mark.parametrize("width,height", [(640, 480), (1280, 720), (1920, 1080), (37, 23)])
def test_round_trip_within_one_pixel(width, height):
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, width, 200), rng.integers(0, height, 200)
    pts = [Point(float(x), float(y)) for x, y in zip(xs, ys)]
    back = parse_points(format_points(pts, width, height, "obj"), width, height)
    assert len(back) == len(pts)
    error = np.abs(points_to_array(back) - points_to_array(pts))
    assert error.max() <= 1.0
    assert {p.label for p in back} == {"obj"}


def test_points_to_array():
    empty = points_to_array([])
    assert empty.shape == (0, 2) and empty.dtype == np.float64
    arr = points_to_array([Point(1, 2, "a"), Point(3.5, 4)])
    np.testing.assert_array_equal(arr, [[1.0, 2.0], [3.5, 4.0]])


def test_fuzzed_text_never_raises_and_stays_in_image():
    rng = np.random.default_rng(1)
    seed_text = ('<points x1="10.5" y1="20.0" x2="99.9" y2="100" alt="a">a</points> '
                 '<point x="50" y="50" alt="b">b</point>')
    alphabet = list('<>/="xyp0123456789.-e ' + "abc\n\t'")
    for _ in range(2000):
        chars = list(seed_text)
        for _ in range(int(rng.integers(1, 8))):
            position = int(rng.integers(0, len(chars)))
            action = rng.integers(0, 3)
            if action == 0:
                del chars[position]
            elif action == 1:
                chars.insert(position, str(rng.choice(alphabet)))
            else:
                chars[position] = str(rng.choice(alphabet))
        for point in parse_points("".join(chars), 64, 48):
            assert 0 <= point.x <= 63 and 0 <= point.y <= 47
