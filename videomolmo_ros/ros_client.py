"""The user's side of the pointing node over DDS: start it, feed it frames, ask, collect.

Used by the demo and the benchmarks; everything goes through real topics and services.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from videomolmo_ros.msg import QueryPoints, TrackedQueries
from videomolmo_ros.node import ns_to_stamp, stamp_to_ns
from videomolmo_ros.srv import CancelQuery, PointQuery

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PACKAGE_ROOT / "config" / "pointing.yaml"


def require_loopback_dds() -> None:
    """Keep DDS on this machine (Fast DDS multicasts otherwise); set before rclpy.init()."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if "ROS_DOMAIN_ID" not in os.environ:
        os.environ["ROS_DOMAIN_ID"] = str(int.from_bytes(os.urandom(1), "little") % 100 + 1)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def yaml_scalar(value: object) -> str:
    """A parameter value as the YAML scalar that ``-p name:=value`` expects."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_scalar(item) for item in value) + "]"
    return str(value)


class NodeProcess:
    """The pointing node in its own process, its output in ``log_path``.

    ``executable`` defaults to ``python -m videomolmo_ros.node``; ``ros_args`` come first
    after ``--ros-args`` (e.g. the params file and remappings a launch file gives).
    """

    def __init__(self, params_file: Path | None = DEFAULT_CONFIG,
                 remappings: dict[str, str] | None = None,
                 parameters: dict[str, object] | None = None, log_path: Path | None = None,
                 executable: list[str] | None = None, ros_args: list[str] = ()) -> None:
        command = list(executable or [sys.executable, "-m", "videomolmo_ros.node"])
        command += ["--ros-args", *ros_args]
        if params_file is not None:
            command += ["--params-file", str(params_file)]
        for source, target in (remappings or {}).items():
            command += ["-r", f"{source}:={target}"]
        for name, value in (parameters or {}).items():
            command += ["-p", f"{name}:={yaml_scalar(value)}"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                          env.get("PYTHONPATH")]))
        self.command = command
        self.log_path = log_path
        self._log = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)

    def log(self) -> str:
        """What the node printed so far ('' without a log file)."""
        if not self.log_path:
            return ""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.log_path:
            self._log.close()
        return self.process.returncode


def rgb8_image(image: np.ndarray, stamp_ns: int, frame_id: str = "camera") -> Image:
    """An H x W x 3 RGB array as a sensor_msgs/Image (rgb8)."""
    height, width = image.shape[:2]
    return Image(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id), height=height,
                 width=width, encoding="rgb8", is_bigendian=0, step=width * 3,
                 data=np.ascontiguousarray(image).tobytes())


def label_image(msg: Image) -> np.ndarray:
    """A mono8 label image message as an H x W uint8 array."""
    data = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
    return data[:, : msg.width].copy()


class PointingClient:
    """Publishes one camera's frames to the node and keeps everything it answers.

    Received label maps are kept by header stamp (ns); each entry also records when it
    arrived (time.monotonic()), for latency figures.
    """

    def __init__(self, image_topic: str, node_name: str = "/videomolmo_pointing",
                 camera: str = "camera") -> None:
        require_loopback_dds()
        if not rclpy.ok():
            rclpy.init()
        self.node = rclpy.create_node("videomolmo_pointing_client")
        self.lock = threading.Lock()
        self.masks: dict[str, dict[int, tuple[np.ndarray, float]]] = defaultdict(dict)
        self.arrivals: dict[str, list[int]] = defaultdict(list)  # stamps in arrival order
        self.points: list[tuple[QueryPoints, float]] = []
        self.overlays: dict[int, tuple[Image, float]] = {}
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        for kind in ("causal", "fused"):
            self.node.create_subscription(
                Image, f"{node_name}/{camera}/masks/{kind}",
                lambda msg, kind=kind: self._store_mask(kind, msg), reliable)
        self.node.create_subscription(Image, f"{node_name}/{camera}/overlay",
                                      self._store_overlay, reliable)
        self.node.create_subscription(QueryPoints, f"{node_name}/points", self._store_points,
                                      reliable)
        self.live_queries: list = []  # the node's latest ~/queries (TrackedQuery list)
        self.node.create_subscription(
            TrackedQueries, f"{node_name}/queries", self._store_queries,
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.stats: dict = {}  # the node's latest ~/stats
        self.node.create_subscription(String, f"{node_name}/stats", self._store_stats, reliable)
        self._images = self.node.create_publisher(Image, image_topic, qos_profile_sensor_data)
        self._point = self.node.create_client(PointQuery, f"{node_name}/point")
        self._cancel = self.node.create_client(CancelQuery, f"{node_name}/cancel")
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._executor.spin, daemon=True)
        self._spinner.start()
        self.published_at: dict[int, float] = {}

    # ---------------------------------------------------------------- receiving
    def _store_mask(self, kind: str, msg: Image) -> None:
        with self.lock:
            stamp = stamp_to_ns(msg.header.stamp)
            self.masks[kind][stamp] = (label_image(msg), time.monotonic())
            self.arrivals[kind].append(stamp)

    def _store_overlay(self, msg: Image) -> None:
        with self.lock:
            self.overlays[stamp_to_ns(msg.header.stamp)] = (msg, time.monotonic())

    def _store_queries(self, msg) -> None:
        with self.lock:
            self.live_queries = list(msg.queries)

    def _store_stats(self, msg: String) -> None:
        with self.lock:
            self.stats = json.loads(msg.data)

    def _store_points(self, msg: QueryPoints) -> None:
        with self.lock:
            self.points.append((msg, time.monotonic()))

    # ---------------------------------------------------------------- sending
    def wait_for_node(self, timeout: float = 30.0,
                      alive: Callable[[], bool] = lambda: True) -> bool:
        """Wait until both services answer a round trip; give up early once ``alive()`` says
        the node died.

        ``wait_for_service`` only says the server is there: the server may not yet have
        matched this client's response reader, and then its first answer is lost (seen once
        in CI: the first call timed out). So probe each service with a request that changes
        nothing (an empty query, an unknown query id) until an answer comes back.
        """
        deadline = time.monotonic() + timeout
        probes = ((self._point, lambda: PointQuery.Request(query="")),
                  (self._cancel, lambda: CancelQuery.Request(query_id=2**32 - 1)))
        for client, request in probes:
            while True:
                if time.monotonic() >= deadline or not alive():
                    return False
                if not client.wait_for_service(timeout_sec=0.5):
                    continue
                future = client.call_async(request())
                if wait_for(future.done, min(2.0, max(0.1, deadline - time.monotonic()))):
                    break
                future.cancel()  # lost: the server had not matched us yet; ask again
        return True

    def publish(self, image: np.ndarray, stamp_ns: int, frame_id: str = "camera") -> None:
        self.published_at[stamp_ns] = time.monotonic()
        self._images.publish(rgb8_image(image, stamp_ns, frame_id))

    def publish_message(self, msg: Image) -> None:
        """Publish a prepared (possibly malformed) image message as it is."""
        self._images.publish(msg)

    def publish_and_wait(self, image: np.ndarray, stamp_ns: int, timeout: float = 15.0,
                         attempts: int = 3, frame_id: str = "camera") -> bool:
        """Publish a frame and wait for its overlay: the node has processed it (lockstep)."""
        for _ in range(attempts):  # best-effort transport: resend a frame that was not seen
            self.publish(image, stamp_ns, frame_id)
            if wait_for(lambda: stamp_ns in self.overlays, timeout / attempts):
                return True
        return False

    def ask(self, query: str, track: bool = True, camera: str = "", timeout_s: float = 0.0):
        """Call ~/point without blocking; returns the rclpy Future."""
        return self._point.call_async(PointQuery.Request(query=query, camera=camera,
                                                         track=bool(track),
                                                         timeout_s=float(timeout_s)))

    def wait_for_query(self, text: str, timeout: float = 10.0) -> bool:
        """Wait until the node lists a live query with this text (it is registered and will
        be pointed at on the camera's next keyframe)."""
        return wait_for(lambda: any(q.query == text for q in self.live_queries), timeout)

    def cancel(self, query_id: int, timeout: float = 10.0) -> CancelQuery.Response | None:
        future = self._cancel.call_async(CancelQuery.Request(query_id=query_id))
        return future.result() if wait_for(future.done, timeout) else None

    def close(self, shutdown_rclpy: bool = True) -> None:
        """Stop spinning and destroy the node; ``shutdown_rclpy=False`` when other clients of
        this process still run."""
        self._executor.shutdown()
        # Let the spinning thread leave its wait set before the node and the context it waits
        # on go: destroying them under it once left that thread busy with the GIL held, and
        # the test process hung (CI, twenty-sixth session).
        self._spinner.join(timeout=10)
        self.node.destroy_node()
        if shutdown_rclpy:
            rclpy.try_shutdown()
