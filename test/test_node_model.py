"""The node with the VideoMolmo pointer: a tiny random-weight checkpoint loaded by the real
loader from the release layout, asked over DDS. The answer is whatever that network says
(random weights point at nothing in particular); what is checked is the path from the service
through the model and back."""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from videomolmo_ros.data.synthetic import SceneConfig, make_scene  # noqa: E402
from videomolmo_ros.model.config import VideoMolmoConfig  # noqa: E402
from videomolmo_ros.model.loading import save_release_layout  # noqa: E402
from videomolmo_ros.model.testing import tiny_tokenizer  # noqa: E402
from videomolmo_ros.model.videomolmo import VideoMolmoModel  # noqa: E402
from videomolmo_ros.node import stamp_to_ns  # noqa: E402
from videomolmo_ros.ros_client import NodeProcess, PointingClient, wait_for  # noqa: E402

IMAGE_TOPIC = "/model_cam/image_raw"


def tiny_checkpoint() -> Path:
    torch.manual_seed(0)
    directory = Path(tempfile.mkdtemp(prefix="tiny_videomolmo_"))
    save_release_layout(VideoMolmoModel(VideoMolmoConfig.tiny()).eval(), directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


@contextmanager
def answered(parameters: dict, log_path: Path, ready_line: str, scene, query: str, track: bool,
             frames: int):
    """Start the node (k = 3) with ``parameters``, wait for ``ready_line`` in its log, play
    frame 0, ask ``query``, play frames 1..frames-1 and yield (the ~/point answer, the client)
    while both still run."""
    node = NodeProcess(remappings={"camera/image_raw": IMAGE_TOPIC}, log_path=log_path,
                       parameters={"pointer.backend": "videomolmo", "k": 3, "l": 2,
                                   **parameters})
    client = PointingClient(IMAGE_TOPIC)
    try:
        assert client.wait_for_node(60, alive=node.alive), node.log()
        # the node logs its settings just after its services appear: wait for the line
        assert wait_for(lambda: ready_line in node.log(), 10), node.log()
        assert client.publish_and_wait(scene.frames[0], scene.stamp_ns(0), timeout=30)
        future = client.ask(query, track=track, timeout_s=60)
        assert client.wait_for_query(query), node.log()
        for t in range(1, frames):  # answered on the next keyframe, t = 3
            assert client.publish_and_wait(scene.frames[t], scene.stamp_ns(t), timeout=30), \
                node.log()
        assert wait_for(future.done, 60), node.log()
        yield future.result(), client
    finally:
        client.close()
        assert node.stop() is not None


def test_node_points_with_a_checkpoint_loaded_by_the_real_loader():
    checkpoint = tiny_checkpoint()
    scene = make_scene(SceneConfig(seed=1, num_frames=8))
    with answered({"model.path": str(checkpoint), "model.max_new_tokens": 12},
                  checkpoint / "node.log", "pointer=videomolmo", scene, "the red circle",
                  track=True, frames=7) as (answer, client):
        assert answer.success, answer.message
        assert stamp_to_ns(answer.keyframe_stamp) == scene.stamp_ns(3)
        assert answer.count == len(answer.points)
        for point in answer.points:  # whatever it points at lies on the image
            assert 0 <= point.x < scene.width and 0 <= point.y < scene.height
        assert wait_for(lambda: any(m.query_id == answer.query_id for m, _ in client.points), 5)
        assert wait_for(lambda: scene.stamp_ns(6) in client.masks["causal"], 5)


def test_node_without_a_model_path_points_with_the_shipped_model():
    """pointer.backend videomolmo and model.path "" (the params file's default): the small
    model shipped in the package, loaded by the real loader, answers a typed query."""
    scene = make_scene(SceneConfig(seed=2, num_frames=4))
    with answered({}, Path(tempfile.mkdtemp()) / "node.log", "weights/videomolmo-small", scene,
                  "the red circle", track=False, frames=4) as (answer, _):
        assert answer.success, answer.message
        assert answer.count == len(answer.points)


def test_node_refuses_a_missing_checkpoint_with_a_reason():
    missing = Path(tempfile.mkdtemp()) / "no_such_checkpoint"
    node = NodeProcess(parameters={"pointer.backend": "videomolmo", "model.path": str(missing)},
                       log_path=Path(tempfile.mkdtemp()) / "node.log")
    assert node.process.wait(timeout=60) == 2
    assert "cannot load the model" in node.log(), node.log()


def test_node_refuses_a_parameter_of_the_wrong_type_with_a_reason():
    folder = Path(tempfile.mkdtemp())
    params = folder / "bad.yaml"
    params.write_text("/**:\n  ros__parameters:\n    k: \"ten\"\n")
    node = NodeProcess(params_file=params, log_path=folder / "node.log")
    assert node.process.wait(timeout=60) == 2
    assert "cannot start" in node.log() and "'k'" in node.log(), node.log()
