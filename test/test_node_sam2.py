"""The node with the SAM2 backend, built from a checkpoint file in the official format (the
weights are random: no weights can be downloaded here), driven over DDS."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from videomolmo_ros.data.synthetic import SceneConfig, make_scene  # noqa: E402
from videomolmo_ros.ros_client import NodeProcess, PointingClient, wait_for  # noqa: E402
from videomolmo_ros.segment.sam2_build import build_model  # noqa: E402

IMAGE_TOPIC = "/sam2_cam/image_raw"
IMAGE_SIZE = 128


def test_node_tracks_with_sam2_from_a_checkpoint_file():
    folder = Path(tempfile.mkdtemp(prefix="sam2_node_"))
    checkpoint = folder / "sam2.1_hiera_tiny_random.pt"
    model = build_model("sam2.1_hiera_t", image_size=IMAGE_SIZE, random_weights=True, seed=3)
    torch.save({"model": model.state_dict()}, checkpoint)  # the release's {"model": ...}
    node = NodeProcess(remappings={"camera/image_raw": IMAGE_TOPIC}, log_path=folder / "node.log",
                       parameters={"pointer.backend": "oracle", "sam2.checkpoint": str(checkpoint), "k": 3,
                                   "sam2.image_size": IMAGE_SIZE})
    client = PointingClient(IMAGE_TOPIC)
    try:
        assert client.wait_for_node(90, alive=node.alive), node.log()
        # The node logs its settings just after its services appear: wait for the line.
        # "auto" picks SAM2 once a checkpoint is set.
        assert wait_for(lambda: "segmenter=sam2" in node.log(), 10), node.log()
        scene = make_scene(SceneConfig(seed=0, num_frames=8))
        expression = next(e for e in scene.expressions if e.kind == "attribute")
        assert client.publish_and_wait(scene.frames[0], scene.stamp_ns(0), timeout=60)
        answer = client.ask(expression.text, track=True, timeout_s=60)
        assert client.wait_for_query(expression.text), node.log()
        for t in range(1, 8):
            assert client.publish_and_wait(scene.frames[t], scene.stamp_ns(t), timeout=60), \
                node.log()
        assert wait_for(answer.done, 60) and answer.result().success, answer.result().message
        assert wait_for(lambda: scene.stamp_ns(7) in client.masks["causal"], 10)
        assert sorted(client.masks["causal"]) == [scene.stamp_ns(t) for t in range(3, 8)]
        # Fused masks travel on their own topic: they may arrive after the last causal one.
        fused = [scene.stamp_ns(t) for t in range(3, 6)]
        assert wait_for(lambda: sorted(client.masks["fused"]) == fused, 10), \
            sorted(client.masks["fused"])
        label_map, _ = client.masks["causal"][scene.stamp_ns(3)]
        assert label_map.shape == (scene.height, scene.width)
    finally:
        client.close()
        node.stop()


def test_node_refuses_a_missing_sam2_checkpoint_with_a_reason():
    folder = Path(tempfile.mkdtemp())
    node = NodeProcess(parameters={"pointer.backend": "oracle", "segmenter.backend": "sam2",
                                   "sam2.checkpoint": str(folder / "missing.pt")},
                       log_path=folder / "node.log")
    assert node.process.wait(timeout=90) == 2
    assert "SAM2 checkpoint not found" in node.log(), node.log()
