"""Two cameras on one node: each has its own topics, buffers and queries."""
from __future__ import annotations

import tempfile
from pathlib import Path

from videomolmo_ros.data.synthetic import SceneConfig, make_scene
from videomolmo_ros.node import stamp_to_ns
from videomolmo_ros.ros_client import NodeProcess, PointingClient, wait_for


def test_queries_and_masks_stay_with_their_camera():
    scene = make_scene(SceneConfig(seed=0, num_frames=12))
    topics = {"front": "/rig/front/image_raw", "wrist": "/rig/wrist/image_raw"}
    log = Path(tempfile.mkdtemp(prefix="pointing_node_")) / "node.log"
    node = NodeProcess(remappings={f"{name}/image_raw": topic for name, topic in topics.items()},
                       parameters={"cameras": ["front", "wrist"], "k": 4,
                                   "pointer.backend": "oracle"}, log_path=log)
    clients = {name: PointingClient(topic, camera=name) for name, topic in topics.items()}
    try:
        assert clients["front"].wait_for_node(30, alive=node.alive), node.log()
        expression = next(e for e in scene.expressions if e.kind == "attribute")
        for name, client in clients.items():
            assert client.publish_and_wait(scene.frames[0], scene.stamp_ns(0)), node.log()
        answer = clients["wrist"].ask(expression.text, camera="wrist")
        assert clients["wrist"].wait_for_query(expression.text), node.log()
        for t in range(1, 10):
            for client in clients.values():
                assert client.publish_and_wait(scene.frames[t], scene.stamp_ns(t)), node.log()
        assert wait_for(answer.done, 10)
        result = answer.result()
        assert result.success, result.message
        assert stamp_to_ns(result.keyframe_stamp) == scene.stamp_ns(4)
        wrist, front = clients["wrist"], clients["front"]
        assert wait_for(lambda: scene.stamp_ns(9) in wrist.masks["causal"], 5)
        assert sorted(wrist.masks["causal"]) == [scene.stamp_ns(t) for t in range(4, 10)]
        # Fused masks travel on their own topic: they may arrive after the last causal one.
        fused = [scene.stamp_ns(t) for t in range(4, 8)]
        assert wait_for(lambda: sorted(wrist.masks["fused"]) == fused, 5), \
            sorted(wrist.masks["fused"])
        assert front.masks["causal"] == {} and front.masks["fused"] == {}
        assert all(m.camera == "wrist" for m, _ in wrist.points)
    finally:
        clients["wrist"].close(shutdown_rclpy=False)
        clients["front"].close()
        node.stop()
