"""The ROS 2 pointing node: a thin rclpy adapter over the streaming engine (stream.py).

Per configured camera NAME it subscribes to ``NAME/image_raw`` (sensor_msgs/Image) and
``NAME/image_raw/compressed`` (sensor_msgs/CompressedImage) with sensor-data QoS, depth 1,
and publishes ``~/NAME/masks/causal`` and ``~/NAME/masks/fused`` (mono8 label images with the
header of their own frame) and ``~/NAME/overlay`` (rgb8 debug image). Node-wide: ``~/points``
(videomolmo_ros/QueryPoints, one per query and keyframe), ``~/queries``
(videomolmo_ros/TrackedQueries, transient local) and the services ``~/point``
(videomolmo_ros/PointQuery) and ``~/cancel`` (videomolmo_ros/CancelQuery).

Threading: image callbacks only keep the newest message per camera (a slow model drops stale
frames instead of queueing them); one worker thread decodes, runs the engine and publishes;
services run in their own callback group on a multi-threaded executor and wait for the worker.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point as PointMsg
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.task import Future
from rclpy.qos import (DurabilityPolicy, QoSProfile, ReliabilityPolicy, HistoryPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from videomolmo_ros.backends import (BackendError, PointerSettings, SegmenterSettings,
                                     make_pointer, make_segmenter, parse_scene_config)
from videomolmo_ros.core.image_decode import ImageDecodeError, decode_image
from videomolmo_ros.core.labels import compose_label_map
from videomolmo_ros.msg import QueryPoints, TrackedQueries, TrackedQuery
from videomolmo_ros.overlay import draw_overlay
from videomolmo_ros.srv import CancelQuery, PointQuery
from videomolmo_ros.core.stats import RunningStats
from videomolmo_ros.stream import (EngineConfig, EngineWarning, KeyframePoints, MaskEvent,
                                   StreamingEngine)


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(stamp_ns: int) -> Time:
    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


@dataclass
class _PendingAnswer:
    """A service call waiting for its query's first keyframe (or its deadline)."""

    future: Future
    deadline: float
    points: KeyframePoints | None = None


@dataclass
class _CameraState:
    """What the node keeps per camera (the engine keeps the rest)."""

    name: str
    latest: Image | CompressedImage | None = None  # newest message not yet processed
    frame_id: str = ""
    received: int = 0
    dropped: int = 0
    decode_errors: int = 0
    last_image: np.ndarray | None = None
    last_points: dict[int, tuple] = field(default_factory=dict)  # label -> points


class PointingNode(Node):
    """VideoMolmo pointing and mask tracking over ROS 2 topics and services."""

    def __init__(self, **kwargs) -> None:
        super().__init__("videomolmo_pointing", **kwargs)
        self._declare_parameters()
        p = self._param
        self.cameras: list[str] = list(p("cameras"))
        if not self.cameras or any(not name or "/" in name for name in self.cameras):
            raise ValueError(f"cameras must be non-empty names without '/': {self.cameras}")
        self.max_image_pixels = int(p("max_image_pixels"))
        self.service_timeout_s = float(p("service_timeout_s"))
        self.publish_overlay = bool(p("publish_overlay"))

        settings = PointerSettings(
            backend=p("pointer.backend"),
            oracle_scene_seed=int(p("oracle.scene_seed")),
            oracle_scene_config=parse_scene_config(p("oracle.scene_config")),
            model_path=p("model.path"), model_dtype=p("model.dtype"),
            model_device=p("model.device"), model_quantization=p("model.quantization"),
            max_new_tokens=int(p("model.max_new_tokens")), history_frames=int(p("l")))
        segmenter = make_segmenter(p("segmenter.backend"), SegmenterSettings(
            sam2_config=p("sam2.config"), sam2_checkpoint=p("sam2.checkpoint"),
            sam2_image_size=int(p("sam2.image_size")), sam2_device=p("sam2.device"),
            sam2_dtype=p("sam2.dtype")))
        self.engine = StreamingEngine(
            make_pointer(settings), segmenter,
            EngineConfig(k=int(p("k")), l=int(p("l")), tau=float(p("tau")),
                         max_queries=int(p("max_queries")),
                         max_query_chars=int(p("max_query_chars"))))

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._state = {name: _CameraState(name) for name in self.cameras}
        self._service_order = list(self.cameras)  # round robin over cameras with a frame
        self._pending: dict[int, _PendingAnswer] = {}
        self._stopping = False
        self._timings = {"decode": RunningStats(), "engine": RunningStats(),
                         "publish": RunningStats()}

        images = MutuallyExclusiveCallbackGroup()
        services = ReentrantCallbackGroup()
        for name in self.cameras:
            self.create_subscription(Image, f"{name}/image_raw",
                                     lambda msg, n=name: self._on_image(n, msg),
                                     qos_profile_sensor_data, callback_group=images)
            self.create_subscription(CompressedImage, f"{name}/image_raw/compressed",
                                     lambda msg, n=name: self._on_image(n, msg),
                                     qos_profile_sensor_data, callback_group=images)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._pub_causal = {n: self.create_publisher(Image, f"~/{n}/masks/causal", reliable)
                            for n in self.cameras}
        self._pub_fused = {n: self.create_publisher(Image, f"~/{n}/masks/fused", reliable)
                           for n in self.cameras}
        self._pub_overlay = {n: self.create_publisher(Image, f"~/{n}/overlay", reliable)
                             for n in self.cameras}
        self._pub_points = self.create_publisher(QueryPoints, "~/points", reliable)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             history=HistoryPolicy.KEEP_LAST)
        self._pub_queries = self.create_publisher(TrackedQueries, "~/queries", latched)
        self.create_service(PointQuery, "~/point", self._on_point, callback_group=services)
        self._answers_ready = self.create_guard_condition(self._answer_pending,
                                                          callback_group=services)
        self.create_timer(0.1, self._answer_pending, callback_group=services)
        self.create_service(CancelQuery, "~/cancel", self._on_cancel, callback_group=services)
        self._publish_queries()
        self._pub_stats = self.create_publisher(String, "~/stats", reliable)
        if float(p("stats_period_s")) > 0:
            self.create_timer(float(p("stats_period_s")), self._publish_stats,
                              callback_group=services)

        self._worker = threading.Thread(target=self._work, name="videomolmo-worker",
                                        daemon=True)
        self._worker.start()
        pointer = settings.backend
        if pointer == "videomolmo":
            from videomolmo_ros.model.shipped import model_path_or_shipped

            pointer += f" model={model_path_or_shipped(settings.model_path)}"
        self.get_logger().info(
            f"ready: cameras={self.cameras} pointer={pointer} "
            f"segmenter={segmenter.name} k={p('k')} l={p('l')} "
            f"history_stride={self.engine.schedule.stride} tau={p('tau')}")

    # ----------------------------------------------------------------- parameters
    def _declare_parameters(self) -> None:
        """Every parameter, with its default, up front (config/pointing.yaml sets them)."""
        self.declare_parameter("cameras", ["camera"])
        self.declare_parameter("k", 10)
        self.declare_parameter("l", 4)
        self.declare_parameter("tau", 0.7)
        self.declare_parameter("pointer.backend", "oracle")
        self.declare_parameter("oracle.scene_seed", 0)
        self.declare_parameter("oracle.scene_config", "")
        self.declare_parameter("model.path", "")
        self.declare_parameter("model.dtype", "fp32")
        self.declare_parameter("model.device", "cpu")
        self.declare_parameter("model.quantization", "")
        self.declare_parameter("model.max_new_tokens", 300)
        self.declare_parameter("segmenter.backend", "auto")
        self.declare_parameter("sam2.config", "sam2.1_hiera_t")
        self.declare_parameter("sam2.checkpoint", "")
        self.declare_parameter("sam2.image_size", 0)
        self.declare_parameter("sam2.device", "cpu")
        self.declare_parameter("sam2.dtype", "float32")
        self.declare_parameter("max_queries", 32)
        self.declare_parameter("max_query_chars", 512)
        self.declare_parameter("max_image_pixels", 3840 * 2160)
        self.declare_parameter("service_timeout_s", 10.0)
        self.declare_parameter("publish_overlay", True)
        self.declare_parameter("stats_period_s", 1.0)

    def _param(self, name: str):
        return self.get_parameter(name).value

    # ----------------------------------------------------------------- callbacks
    def _on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        """Keep only the newest message of a camera; the worker takes it when free."""
        with self._wake:
            state = self._state[camera]
            if state.latest is not None:
                state.dropped += 1
            state.latest = msg
            state.received += 1
            self._wake.notify()

    async def _on_point(self, request: PointQuery.Request,
                        response: PointQuery.Response) -> PointQuery.Response:
        """Register the query, then await its first keyframe without holding a thread
        (a blocking wait would starve the executor of threads for the image callbacks)."""
        camera = request.camera or self.cameras[0]
        response.success = False
        if camera not in self._state:
            response.message = f"unknown camera {camera!r}; cameras: {', '.join(self.cameras)}"
            return response
        if self._state[camera].received == 0:
            response.message = f"no image received yet on camera {camera!r}"
            return response
        if not np.isfinite(request.timeout_s) or request.timeout_s < 0:
            response.message = f"timeout_s must be >= 0, got {request.timeout_s}"
            return response
        try:
            query = self.engine.add_query(request.query, camera, track=request.track)
        except ValueError as error:
            response.message = str(error)
            return response
        timeout = request.timeout_s or self.service_timeout_s
        answer = Future()
        with self._lock:
            self._pending[query.id] = _PendingAnswer(answer, time.monotonic() + timeout)
        self._publish_queries()
        found: KeyframePoints | None = await answer
        if found is None:
            self.engine.cancel_query(query.id)
            self._publish_queries()
            response.message = (f"no keyframe of camera {camera!r} was processed within "
                                f"{timeout:.1f} s; query cancelled")
            return response
        response.success = True
        response.query_id = query.id
        response.label = query.label if query.track else 0
        response.keyframe_stamp = ns_to_stamp(found.stamp_ns)
        response.points = [PointMsg(x=float(pt.x), y=float(pt.y), z=0.0) for pt in found.points]
        response.count = len(found.points)
        response.message = f"{len(found.points)} point(s) on keyframe {found.frame_index}"
        if not query.track:
            self._publish_queries()
        return response

    def _answer_pending(self) -> None:
        """Complete the service calls whose keyframe came or whose time ran out.

        Runs in the executor (guard condition and timer): futures awaited by service
        callbacks must be completed there to wake them."""
        now = time.monotonic()
        with self._lock:
            finished = [(query_id, pending) for query_id, pending in self._pending.items()
                        if pending.points is not None or now > pending.deadline
                        or self._stopping]
            for query_id, _ in finished:
                del self._pending[query_id]
        for _, pending in finished:
            if not pending.future.done():
                pending.future.set_result(pending.points)

    def _on_cancel(self, request: CancelQuery.Request,
                   response: CancelQuery.Response) -> CancelQuery.Response:
        if request.query_id == 0:
            ids = [q.id for q in self.engine.queries()]
            for query_id in ids:
                self.engine.cancel_query(query_id)
            response.success, response.message = True, f"cancelled {len(ids)} query(ies)"
        elif self.engine.cancel_query(int(request.query_id)):
            response.success, response.message = True, f"cancelled query {request.query_id}"
        else:
            response.success = False
            response.message = f"no live query with id {request.query_id}"
        self._publish_queries()
        return response

    # ----------------------------------------------------------------- worker
    def _next_message(self) -> tuple[str, Image | CompressedImage] | None:
        """Wait for the oldest-waiting camera's newest message (round robin)."""
        with self._wake:
            while not self._stopping:
                for name in self._service_order:
                    state = self._state[name]
                    if state.latest is not None:
                        msg, state.latest = state.latest, None
                        # the camera just served goes to the back of the line
                        self._service_order.remove(name)
                        self._service_order.append(name)
                        return name, msg
                self._wake.wait(0.5)
        return None

    def _work(self) -> None:
        while True:
            item = self._next_message()
            if item is None:
                return
            camera, msg = item
            try:
                self._process(camera, msg)
            except Exception as error:  # the stream must go on; say what happened
                self.get_logger().error(f"camera {camera!r}: frame skipped: "
                                        f"{type(error).__name__}: {error}")

    def _decode(self, camera: str, msg: Image | CompressedImage) -> np.ndarray | None:
        state = self._state[camera]
        try:
            if isinstance(msg, CompressedImage):
                raw = np.frombuffer(bytes(msg.data), np.uint8)
                bgr = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
                if bgr is None:
                    raise ImageDecodeError(f"compressed image ({msg.format!r}) does not decode")
                if self.max_image_pixels and bgr.shape[0] * bgr.shape[1] > self.max_image_pixels:
                    raise ImageDecodeError(f"image of {bgr.shape[1]} x {bgr.shape[0]} exceeds "
                                           f"the limit of {self.max_image_pixels} pixels")
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            return decode_image(msg.encoding, msg.height, msg.width, msg.step,
                                bool(msg.is_bigendian), msg.data, self.max_image_pixels)
        except ImageDecodeError as error:
            state.decode_errors += 1
            self.get_logger().warning(f"camera {camera!r}: image dropped: {error}")
            return None

    def _process(self, camera: str, msg: Image | CompressedImage) -> None:
        started = time.perf_counter()
        image = self._decode(camera, msg)
        decoded = time.perf_counter()
        self._timings["decode"].add(decoded - started)
        if image is None:
            return
        state = self._state[camera]
        state.frame_id = msg.header.frame_id
        state.last_image = image
        stamp_ns = stamp_to_ns(msg.header.stamp)
        events = self.engine.push(camera, image, stamp_ns)
        pushed = time.perf_counter()
        self._timings["engine"].add(pushed - decoded)
        causal_labels = None
        for event in events:
            if isinstance(event, KeyframePoints):
                self._publish_points(event, state)
            elif isinstance(event, MaskEvent):
                label_map = compose_label_map(event.masks, event.labels, event.shape)
                publisher = (self._pub_causal if event.kind == "causal" else self._pub_fused)
                publisher[camera].publish(self._mono8(label_map, event.stamp_ns, state.frame_id))
                if event.kind == "causal" and event.stamp_ns == stamp_ns:
                    causal_labels = label_map
            elif isinstance(event, EngineWarning):
                self.get_logger().warning(f"camera {camera!r}: {event.message}")
        if self.publish_overlay:
            live = {q.label: q.text for q in self.engine.queries()
                    if q.camera == camera and q.track}
            points = {label: pts for label, pts in state.last_points.items() if label in live}
            overlay = draw_overlay(image, causal_labels, points, live)
            self._pub_overlay[camera].publish(self._rgb8(overlay, msg.header))
        self._timings["publish"].add(time.perf_counter() - pushed)

    # ----------------------------------------------------------------- publishing
    def _publish_points(self, event: KeyframePoints, state: _CameraState) -> None:
        header = Header(stamp=ns_to_stamp(event.stamp_ns), frame_id=state.frame_id)
        msg = QueryPoints(header=header, camera=event.camera, query_id=event.query_id,
                          query=event.query_text, label=event.label,
                          image_width=event.width, image_height=event.height,
                          points=[PointMsg(x=float(p.x), y=float(p.y), z=0.0)
                                  for p in event.points],
                          count=len(event.points))
        self._pub_points.publish(msg)
        if event.label:
            state.last_points[event.label] = event.points
        with self._lock:
            pending = self._pending.get(event.query_id)
            if pending is not None and pending.points is None:
                pending.points = event
        if pending is not None:
            self._answers_ready.trigger()

    def _publish_queries(self) -> None:
        now = self.get_clock().now().to_msg()
        self._pub_queries.publish(TrackedQueries(stamp=now, queries=[
            TrackedQuery(query_id=q.id, query=q.text, camera=q.camera,
                         label=q.label if q.track else 0, track=q.track)
            for q in self.engine.queries()]))

    def _publish_stats(self) -> None:
        """JSON on ~/stats: per-camera counters and per-stage timings (seconds), for
        monitoring and the benchmarks."""
        with self._lock:
            cameras = {name: {"received": st.received, "dropped": st.dropped,
                              "decode_errors": st.decode_errors}
                       for name, st in self._state.items()}
        for name, counters in self.engine.stats.items():
            cameras.setdefault(name, {}).update(vars(counters))
        stages = {name: stats.summary() for name, stats in self.engine.timings.items()}
        stages.update({name: stats.summary() for name, stats in self._timings.items()})
        pointer_timings = getattr(self.engine.pointer, "timings", {})  # the model's own split
        stages.update({f"pointer.{name}": stats.summary()
                       for name, stats in pointer_timings.items()})
        self._pub_stats.publish(String(data=json.dumps({"cameras": cameras, "stages": stages})))

    @staticmethod
    def _mono8(label_map: np.ndarray, stamp_ns: int, frame_id: str) -> Image:
        height, width = label_map.shape
        return Image(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id),
                     height=height, width=width, encoding="mono8", is_bigendian=0,
                     step=width, data=label_map.tobytes())

    @staticmethod
    def _rgb8(image: np.ndarray, header: Header) -> Image:
        height, width = image.shape[:2]
        return Image(header=header, height=height, width=width, encoding="rgb8",
                     is_bigendian=0, step=width * 3, data=np.ascontiguousarray(image).tobytes())

    def stop(self) -> None:
        """Stop the worker and release every waiting service call."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._worker.join(timeout=5.0)


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    try:
        node = PointingNode()
    except (ValueError, BackendError, InvalidParameterTypeException,
            InvalidParameterValueException) as error:
        print(f"videomolmo_pointing: cannot start: {error}", file=sys.stderr)
        rclpy.try_shutdown()
        sys.exit(2)
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.stop()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
