"""The node executable, started as the launch file starts it, driven over real DDS."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from launch_reader import node_executable, node_ros_args, read_launch_file
from videomolmo_ros.core.metrics import region_similarity
from videomolmo_ros.data.synthetic import SceneConfig, make_scene
from videomolmo_ros.node import stamp_to_ns
from videomolmo_ros.ros_client import NodeProcess, PointingClient, rgb8_image, wait_for

K = 10
IMAGE_TOPIC = "/test_cam/image_raw"  # given to the launch file's image_topic argument
SCENE_SEED = 0


@pytest.fixture(scope="module")
def ros():
    """The node process (as the launch file starts it) and a client spinning beside it."""
    launched = read_launch_file({"image_topic": IMAGE_TOPIC})
    assert launched.remappings == [("camera/image_raw", IMAGE_TOPIC),
                                   ("camera/image_raw/compressed", IMAGE_TOPIC + "/compressed")]
    log = Path(tempfile.mkdtemp(prefix="pointing_node_")) / "node.log"
    node = NodeProcess(params_file=None, executable=node_executable(launched),
                       ros_args=node_ros_args(launched), log_path=log,
                       parameters={"pointer.backend": "oracle",
                                   "oracle.scene_seed": SCENE_SEED, "k": K})
    client = PointingClient(IMAGE_TOPIC, node_name=f"/{launched.name}")
    assert client.wait_for_node(30, alive=node.alive), node.log()
    yield dict(node=node, client=client)
    client.close()
    node.stop()


def call(future, timeout=30.0):
    assert wait_for(future.done, timeout), "service call timed out"
    return future.result()


def test_pointing_tracking_and_fusion_over_dds(ros):
    scene = make_scene(SceneConfig(seed=SCENE_SEED))
    client, node = ros["client"], ros["node"]
    expression = next(e for e in scene.expressions if e.kind == "attribute")

    # Before any frame: a clear refusal, not a hang.
    early = call(client.ask(expression.text))
    assert not early.success and "no image received" in early.message

    assert client.publish_and_wait(scene.frames[0], scene.stamp_ns(0)), node.log()
    bad_camera = call(client.ask("x", camera="nope"))
    assert not bad_camera.success and "unknown camera" in bad_camera.message
    empty = call(client.ask("   "))
    assert not empty.success and empty.message

    # A standing and a one-shot query: both are answered at the next keyframe (frame K).
    standing = client.ask(expression.text, track=True)
    one_shot = client.ask(expression.text, track=False)
    assert wait_for(lambda: sum(q.query == expression.text for q in client.live_queries) == 2,
                    10), node.log()
    last = 3 * K  # frames 0..3K: keyframes 0, K, 2K, 3K
    for t in range(1, last + 1):
        assert client.publish_and_wait(scene.frames[t], scene.stamp_ns(t)), node.log()
    answer, single = call(standing, 10), call(one_shot, 10)
    assert answer.success, answer.message
    assert stamp_to_ns(answer.keyframe_stamp) == scene.stamp_ns(K)
    gt_points = scene.points_for(expression.object_ids, K)
    assert answer.count == len(answer.points) == len(gt_points) >= 1
    for p in answer.points:
        assert any(scene.masks[K][o][int(p.y), int(p.x)] for o in expression.object_ids)
    assert answer.label >= 1
    assert single.success and single.label == 0 and single.count == answer.count

    # Points topic: one message per query and keyframe, with the keyframe's header.
    assert wait_for(lambda: sum(m.query_id == answer.query_id for m, _ in client.points) >= 3, 5), \
        [(m.query_id, m.header.stamp) for m, _ in client.points]
    points = [m for m, _ in client.points if m.query_id == answer.query_id]
    assert [stamp_to_ns(m.header.stamp) for m in points] == \
        [scene.stamp_ns(t) for t in (K, 2 * K, 3 * K)]
    assert all(m.header.frame_id == "camera" and m.camera == "camera" for m in points)

    # Causal masks on every frame from the first keyframe on, each with its own frame's stamp.
    assert wait_for(lambda: len(client.arrivals["causal"]) >= last - K + 1, 10)
    assert client.arrivals["causal"] == [scene.stamp_ns(t) for t in range(K, last + 1)]
    # Fused masks: frames K..3K-1 (keyframe 3K's window is released by keyframe 4K), in order.
    assert wait_for(lambda: len(client.arrivals["fused"]) >= 2 * K, 10)
    assert client.arrivals["fused"] == [scene.stamp_ns(t) for t in range(K, 3 * K)]

    ious = []
    for t in range(K, 3 * K):
        label_map, _ = client.masks["fused"][scene.stamp_ns(t)]
        truth = np.any(scene.masks[t][list(expression.object_ids)], axis=0)
        ious.append(region_similarity(label_map == answer.label, truth))
    assert np.mean(ious) > 0.5, ious

    # ~/queries lists the standing query (the one-shot one is gone after its answer).
    assert wait_for(lambda: [q.query_id for q in client.live_queries] == [answer.query_id], 5)

    # Cancel: an unknown id is refused; the real one stops the masks at once.
    assert not client.cancel(9999).success
    assert client.cancel(answer.query_id).success
    count = len(client.arrivals["causal"])
    for t in range(last + 1, last + 3):
        assert client.publish_and_wait(scene.frames[t], scene.stamp_ns(t))
    time.sleep(0.3)
    assert len(client.arrivals["causal"]) == count
    assert node.alive()


def test_corrupt_images_are_warned_about_not_fatal(ros):
    client, node = ros["client"], ros["node"]
    good = np.full((24, 32, 3), 120, np.uint8)
    message = lambda **fields: _with(rgb8_image(good, 1), **fields)  # noqa: E731
    for bad in (message(step=10),                                   # step shorter than a row
                message(encoding="weird16"),                        # unknown encoding
                message(height=0, width=0, step=0, data=b""),       # zero size
                message(data=good.tobytes()[:100])):                # truncated data
        client.publish_message(bad)
        time.sleep(0.2)
    assert client.publish_and_wait(good, 10**12), node.log()
    assert node.alive()
    log = node.log()
    assert "smaller than a row" in log
    assert "unsupported encoding 'weird16'" in log
    assert "empty image" in log
    assert "bytes" in log and "expected" in log


def _with(msg, **fields):
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def test_compressed_images_are_decoded_and_garbage_is_warned_about(ros):
    import cv2
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage

    from videomolmo_ros.node import ns_to_stamp
    client, node = ros["client"], ros["node"]
    publisher = client.node.create_publisher(CompressedImage, IMAGE_TOPIC + "/compressed",
                                             qos_profile_sensor_data)
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (255, 0, 0)  # left half red
    ok, jpeg = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    stamp = 2 * 10**12
    garbage = CompressedImage(format="jpeg", data=b"not an image")
    garbage.header.stamp = ns_to_stamp(stamp - 1)
    for _ in range(5):  # best effort, and the publisher is new: resend until it is seen
        publisher.publish(garbage)
        if wait_for(lambda: "does not decode" in node.log(), 2):
            break
    message = CompressedImage(format="png", data=jpeg.tobytes())
    message.header.stamp = ns_to_stamp(stamp)
    for _ in range(3):  # best effort: resend until the node has matched and processed it
        publisher.publish(message)
        if wait_for(lambda: stamp in client.overlays, 5):
            break
    overlay, _ = client.overlays[stamp]
    picture = np.frombuffer(bytes(overlay.data), np.uint8).reshape(48, 64, 3)
    np.testing.assert_array_equal(picture[40, 5], (255, 0, 0))   # decoded as RGB, not BGR
    np.testing.assert_array_equal(picture[40, 60], (0, 0, 0))
    assert "compressed image ('jpeg') does not decode" in node.log()
    assert node.alive()
