"""Dataset readers, each on a tiny sample written here in that dataset's published layout
(2 videos, 3 frames, tiny images), plus the COCO RLE codec MeViS needs."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from videomolmo_ros.data.synthetic import generate_scene, write_scene
from videomolmo_ros.eval.datasets import DatasetError, open_dataset
from videomolmo_ros.eval.datasets.rle import (decode_counts_string, decode_rle,
                                              encode_counts_string, encode_rle)

H, W = 6, 8
FRAMES = ("00000", "00001", "00002")


# ----------------------------------------------------------------------------- writers

def write_jpg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((H, W, 3), dtype=np.uint8)
    image[..., 0] = value  # red channel (RGB), so a BGR/RGB mix-up shows
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def write_palette_png(path: Path, labels: np.ndarray) -> None:
    """A DAVIS-style palette PNG: pixel value = palette index = object id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]),
                            labels.astype(np.uint8).tobytes())
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (768 - 12))
    image.save(path)


def write_binary_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), mask.astype(np.uint8) * 255)


def labels_for(t: int) -> np.ndarray:
    """Object 1 in the left part (moving right with t), object 2 bottom right, 255 = void."""
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[1:3, t:t + 3] = 1
    labels[4:6, 5:8] = 2
    labels[0, 7] = 255
    return labels


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def ytvos_meta(videos: dict[str, list[tuple[str, str | None]]]) -> dict:
    out = {}
    for video, expressions in videos.items():
        exps = {}
        for i, (text, obj) in enumerate(expressions):
            exps[str(i)] = {"exp": text} if obj is None else {"exp": text, "obj_id": obj}
        out[video] = {"expressions": exps, "frames": list(FRAMES)}
    return {"videos": out}


# ----------------------------------------------------------------------------- RLE

def test_rle_known_strings_and_round_trip():
    center = np.zeros((3, 3), dtype=bool)
    center[1, 1] = True
    assert decode_counts_string("414") == [4, 1, 4]  # cocoapi's string for this mask
    assert encode_rle(center) == {"size": [3, 3], "counts": "414"}
    assert np.array_equal(decode_rle({"size": [3, 3], "counts": "414"}), center)
    # uncompressed counts, column-major: first column all object
    mask = decode_rle({"size": [2, 3], "counts": [0, 2, 4]})
    assert mask.tolist() == [[True, False, False], [True, False, False]]
    rng = np.random.default_rng(0)
    for _ in range(50):  # long runs exercise multi-group values and negative deltas
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        m = rng.random((h, w)) < rng.random()
        assert np.array_equal(decode_rle(encode_rle(m)), m)
        counts = decode_counts_string(encode_rle(m)["counts"])
        assert encode_counts_string(counts) == encode_rle(m)["counts"]
    with pytest.raises(ValueError):
        decode_rle({"size": [3, 3], "counts": "41"})


# ----------------------------------------------------------------------------- Ref-DAVIS-17

def test_ref_davis_converted_layout(tmp_path):
    root = tmp_path / "ref-davis"
    write_json(root / "meta_expressions" / "valid" / "meta_expressions.json", ytvos_meta({
        "bike-packing": [("a man riding a bike", "1"), ("a man riding a bike", "1"),
                         ("the bike", "2"), ("the bike on the right", "2")],
        "blackswan": [("a black swan", "1")] * 4}))
    for video in ("bike-packing", "blackswan"):
        for t, name in enumerate(FRAMES):
            write_jpg(root / "valid" / "JPEGImages" / video / f"{name}.jpg", 40 * t + 20)
            write_palette_png(root / "valid" / "Annotations" / video / f"{name}.png",
                              labels_for(t))
    dataset = open_dataset("ref-davis17", root)
    assert dataset.video_ids() == ["bike-packing", "blackswan"]
    sample = dataset.sample("bike-packing")
    assert sample.num_frames == 3 and sample.frame_names == FRAMES and sample.fps == 24.0
    assert [e.exp_id for e in sample.expressions] == ["0", "1", "2", "3"]
    assert sample.expressions[2].object_ids == ("2",)
    frame = sample.frame(1)
    assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
    assert abs(int(frame[0, 0, 0]) - 60) <= 3 and int(frame[0, 0, 2]) <= 3  # RGB order
    for t in range(3):
        assert np.array_equal(sample.object_mask(t, "1"), labels_for(t) == 1)
        assert not sample.object_mask(t, "2")[0, 7]  # void (255) is no object's
    assert sample.expression_mask(0, sample.expressions[2]).sum() == 6
    assert sample.frame_shape(0) == (H, W)


def test_ref_davis_original_layout(tmp_path):
    root = tmp_path / "davis2017"
    write_json(root / "unused.json", {})
    (root / "DAVIS" / "ImageSets" / "2017").mkdir(parents=True)
    (root / "DAVIS" / "ImageSets" / "2017" / "val.txt").write_text("classic-car\ndogs-scale\n")
    (root / "DAVIS" / "ImageSets" / "2017" / "train.txt").write_text("bear\n")
    for video in ("classic-car", "dogs-scale"):
        for t, name in enumerate(FRAMES):
            write_jpg(root / "DAVIS" / "JPEGImages" / "480p" / video / f"{name}.jpg", 50)
            write_palette_png(root / "DAVIS" / "Annotations_unsupervised" / "480p" / video /
                              f"{name}.png", labels_for(t))
    text = root / "davis_text_annotations"
    text.mkdir()
    # misspelt video names as in the real files; annotator 2 is latin-1
    (text / "Davis17_annot1.txt").write_text(
        'clasic-car 2 "a white car"\nclasic-car 1 "a man"\ndog-scale 1 "a small dog"\n')
    (text / "Davis17_annot1_full_video.txt").write_text(
        'clasic-car 1 "a man walking"\nclasic-car 2 "a white car parked"\n'
        'dog-scale 1 "a dog"\n')
    (text / "Davis17_annot2.txt").write_bytes(
        'clasic-car 1 "a man in a caf\u00e9"\nclasic-car 2 "car"\ndog-scale 1 "dog"\n'
        .encode("latin-1"))
    (text / "Davis17_annot2_full_video.txt").write_bytes(
        b'clasic-car 1 "man"\nclasic-car 2 "the car"\ndog-scale 1 "puppy"\n')
    dataset = open_dataset("ref-davis", root)
    assert dataset.video_ids() == ["classic-car", "dogs-scale"]
    sample = dataset.sample("classic-car")
    texts = [(e.exp_id, e.text, e.object_ids, e.extra["annotator"], e.extra["kind"])
             for e in sample.expressions]
    assert texts == [  # ReferFormer's order: per object, a1 first, a1 full, a2 first, a2 full
        ("0", "a man", ("1",), "1", "first_frame"),
        ("1", "a man walking", ("1",), "1", "full_video"),
        ("2", "a man in a caf\u00e9", ("1",), "2", "first_frame"),
        ("3", "man", ("1",), "2", "full_video"),
        ("4", "a white car", ("2",), "1", "first_frame"),
        ("5", "a white car parked", ("2",), "1", "full_video"),
        ("6", "car", ("2",), "2", "first_frame"),
        ("7", "the car", ("2",), "2", "full_video")]
    assert sample.frame_names == FRAMES
    assert np.array_equal(sample.object_mask(2, "2"), labels_for(2) == 2)
    assert len(dataset.sample("dogs-scale").expressions) == 4
    assert open_dataset("ref-davis17", root, "train").video_ids() == ["bear"]
    with pytest.raises(DatasetError):
        open_dataset("ref-davis17", tmp_path / "nothing")


# ----------------------------------------------------------------------------- Ref-YouTube-VOS

def test_ref_youtube_vos(tmp_path):
    root = tmp_path / "ref-youtube-vos"
    write_json(root / "meta_expressions" / "train" / "meta_expressions.json", ytvos_meta({
        "003234408d": [("a penguin on the left", "1"), ("a penguin in the back", "2")],
        "0043f083b5": [("a bus", "1")]}))
    write_json(root / "meta_expressions" / "valid" / "meta_expressions.json", ytvos_meta({
        "0062f687f1": [("a man", None)], "test_video": [("a dog", None)]}))
    write_json(root / "meta_expressions" / "test" / "meta_expressions.json",
               ytvos_meta({"test_video": [("a dog", None)]}))
    write_json(root / "train" / "meta.json", {"videos": {}})
    for video in ("003234408d", "0043f083b5"):
        for t, name in enumerate(FRAMES):
            write_jpg(root / "train" / "JPEGImages" / video / f"{name}.jpg", 10)
            write_palette_png(root / "train" / "Annotations" / video / f"{name}.png",
                              labels_for(t))
    for video in ("0062f687f1", "test_video"):
        for name in FRAMES:
            write_jpg(root / "valid" / "JPEGImages" / video / f"{name}.jpg", 10)
    train = open_dataset("ref-youtube-vos", root, "train")
    assert train.video_ids() == ["003234408d", "0043f083b5"]
    sample = train.sample("003234408d")
    assert [e.object_ids for e in sample.expressions] == [("1",), ("2",)]
    assert sample.has_masks and sample.fps == 6.0
    assert np.array_equal(sample.object_mask(1, "2"), labels_for(1) == 2)
    valid = open_dataset("ref-ytvos", root)  # default split: valid, test videos dropped
    assert valid.video_ids() == ["0062f687f1"]
    sample = valid.sample("0062f687f1")
    assert not sample.has_masks and sample.expressions[0].object_ids == ()
    assert sample.object_mask(0, "1") is None
    assert sample.frame(0).shape == (H, W, 3)


# ----------------------------------------------------------------------------- MeViS

def test_mevis_multi_object_rle(tmp_path):
    root = tmp_path / "mevis"
    split = root / "valid_u"
    meta = {"videos": {
        "0ab4afe7fb46": {"frames": list(FRAMES), "expressions": {
            "0": {"exp": "two birds flying", "obj_id": [0, 1], "anno_id": [10, 11]},
            "1": {"exp": "the bird on the left", "obj_id": [0], "anno_id": [10]}}},
        "1bc2de33aa01": {"frames": list(FRAMES), "expressions": {
            "0": {"exp": "car moving away", "obj_id": [0], "anno_id": [20]}}}}}
    write_json(split / "meta_expressions.json", meta)
    masks = {}
    for anno, label in (("10", 1), ("11", 2), ("20", 1)):
        per_frame = [encode_rle(labels_for(t) == label) for t in range(3)]
        if anno == "11":
            per_frame[1] = None  # object absent on frame 1
        masks[anno] = per_frame
    write_json(split / "mask_dict.json", masks)
    for video in meta["videos"]:
        for name in FRAMES:
            write_jpg(split / "JPEGImages" / video / f"{name}.jpg", 30)
    dataset = open_dataset("mevis", root)
    assert dataset.video_ids() == ["0ab4afe7fb46", "1bc2de33aa01"]
    sample = dataset.sample("0ab4afe7fb46")
    assert dataset._mask_dict is None  # mask_dict.json is read on the first mask only
    both = sample.expressions[0]
    assert both.object_ids == ("10", "11") and both.extra["obj_id"] == "0,1"
    labels = labels_for(0)
    assert np.array_equal(sample.expression_mask(0, both), (labels == 1) | (labels == 2))
    assert np.array_equal(sample.expression_mask(1, both), labels_for(1) == 1)
    assert sample.object_mask(1, "11").shape == (H, W) and not sample.object_mask(1, "11").any()
    assert np.array_equal(sample.object_mask(2, "10"), labels_for(2) == 1)


# ----------------------------------------------------------------------------- ReasonVOS

def test_reasonvos(tmp_path):
    root = tmp_path / "ReasonVOS"
    meta = {"videos": {
        "vid_a": {"source": "MOSE", "frames": list(FRAMES), "expressions": [
            {"obj_id": 1, "exp_id": 0, "exp_text": "the animal that can fly", "is_sent": True},
            {"obj_id": 2, "exp_id": 1, "exp_text": "what the bird stands on", "is_sent": True}]},
        "vid_b": {"source": "BURST", "frames": list(FRAMES), "expressions": [
            {"obj_id": 3, "exp_id": 7, "exp_text": "the fastest vehicle", "is_sent": False}]}}}
    write_json(root / "meta_expressions.json", meta)
    for video, info in meta["videos"].items():
        for t, name in enumerate(FRAMES):
            write_jpg(root / "JPEGImages" / video / f"{name}.jpg", 80)
            for item in info["expressions"]:
                key = f"{info['source']}_{video}_{item['obj_id']}"
                write_binary_png(root / "Annotations" / key / f"{name}.png",
                                 labels_for(t) == (1 if item["obj_id"] != 2 else 2))
    dataset = open_dataset("reasonvos", root)
    assert dataset.video_ids() == ["vid_a", "vid_b"]
    sample = dataset.sample("vid_a")
    assert sample.group == "MOSE"
    assert [(e.exp_id, e.object_ids) for e in sample.expressions] == [
        ("0", ("MOSE_vid_a_1",)), ("1", ("MOSE_vid_a_2",))]
    assert np.array_equal(sample.expression_mask(2, sample.expressions[1]), labels_for(2) == 2)
    other = dataset.sample("vid_b")
    assert other.expressions[0].extra["is_sent"] == "False"
    assert np.array_equal(other.object_mask(1, "BURST_vid_b_3"), labels_for(1) == 1)


# ----------------------------------------------------------------------------- VPoS-Bench

def test_vpos_bench_points_and_subsets(tmp_path):
    root = tmp_path / "VPoS-Bench"
    for subset, count in (("Cells", None), ("Counting", 2)):
        video = f"{subset.lower()}_01"
        expression = {"exp": "point to every cell", "points": {
            "00000": [[2.0, 1.5], [6.0, 4.5]], "00002": [[4.0, 1.0]]}}
        if count is not None:
            expression["count"] = count
        write_json(root / subset / "meta_expressions.json", {"videos": {video: {
            "frames": list(FRAMES), "expressions": {"0": expression}}}})
        for t, name in enumerate(FRAMES):
            write_jpg(root / subset / "JPEGImages" / video / f"{name}.jpg", 90)
            write_palette_png(root / subset / "Annotations" / video / "0" / f"{name}.png",
                              np.where(labels_for(t) == 255, 0, labels_for(t)))
    dataset = open_dataset("vpos-bench", root)
    assert dataset.video_ids() == ["Cells/cells_01", "Counting/counting_01"]
    sample = dataset.sample("Cells/cells_01")
    assert sample.group == "Cells"
    expression = sample.expressions[0]
    assert expression.points == {0: ((2.0, 1.5), (6.0, 4.5)), 2: ((4.0, 1.0),)}
    assert expression.object_ids == ("0#1", "0#2") and not expression.counting
    assert np.array_equal(sample.object_mask(0, "0#2"), labels_for(0) == 2)
    counting = dataset.sample("Counting/counting_01").expressions[0]
    assert counting.counting and counting.count == 2
    assert open_dataset("vpos", root, "Cells").video_ids() == ["Cells/cells_01"]
    with pytest.raises(DatasetError):
        open_dataset("vpos-bench", root, "Robots")


# ----------------------------------------------------------------------------- synthetic export

def test_synthetic_export(tmp_path):
    scenes = [generate_scene(seed, num_frames=3, width=64, height=48, num_objects=(2, 3))
              for seed in (0, 1)]
    for i, scene in enumerate(scenes):
        write_scene(scene, tmp_path / f"scene_{i}")
    dataset = open_dataset("synthetic", tmp_path)
    assert dataset.video_ids() == ["scene_0", "scene_1"]
    for i, sample in enumerate(dataset):
        scene = scenes[i]
        assert sample.num_frames == 3 and sample.stamp_ns(2) == scene.stamp_ns(2)
        assert np.array_equal(sample.frame(1), scene.frames[1])  # PNG: lossless
        assert [e.text for e in sample.expressions] == [e.text for e in scene.expressions]
        for e, truth in zip(sample.expressions, scene.expressions):
            assert e.object_ids == tuple(str(o) for o in truth.object_ids)
            assert e.counting == (truth.kind == "counting")
            want = np.zeros((48, 64), dtype=bool)
            for o in truth.object_ids:
                want |= scene.masks[2, o]
            assert np.array_equal(sample.expression_mask(2, e), want)
    with pytest.raises(DatasetError):
        open_dataset("no-such-dataset", tmp_path)
