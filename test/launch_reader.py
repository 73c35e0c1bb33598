"""Read what launch/pointing.launch.py starts, without the `launch` packages.

`launch`, `launch_ros` and `ament_index_python` are not installable in this venv, so these
stand-ins record what the launch file builds (its arguments and its Node) and resolve the
substitutions with the arguments' values. The tests then run that executable for real with
that params file and those remappings.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class LaunchedNode:
    package: str
    executable: str
    name: str
    namespace: str
    params_files: list[str]
    remappings: list[tuple[str, str]]


class _Configuration:
    def __init__(self, name: str) -> None:
        self.name = name


class _Argument:
    def __init__(self, name: str, default_value: str = "", description: str = "") -> None:
        self.name, self.default_value = name, default_value


class _Node:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs


class _Description:
    def __init__(self, entities) -> None:
        self.entities = list(entities)


def _stub_modules(share_dir: Path) -> dict[str, types.ModuleType]:
    launch = types.ModuleType("launch")
    launch.LaunchDescription = _Description
    actions = types.ModuleType("launch.actions")
    actions.DeclareLaunchArgument = _Argument
    substitutions = types.ModuleType("launch.substitutions")
    substitutions.LaunchConfiguration = _Configuration
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = _Node
    ament = types.ModuleType("ament_index_python")
    packages = types.ModuleType("ament_index_python.packages")
    packages.get_package_share_directory = lambda name: str(share_dir)
    return {"launch": launch, "launch.actions": actions, "launch.substitutions": substitutions,
            "launch_ros": launch_ros, "launch_ros.actions": ros_actions,
            "ament_index_python": ament, "ament_index_python.packages": packages}


def read_launch_file(arguments: dict[str, str] | None = None,
                     path: Path = REPO / "launch" / "pointing.launch.py") -> LaunchedNode:
    """The node the launch file starts, with substitutions resolved (the source tree stands in
    for the package's share directory, as `colcon build` installs launch/ and config/ there)."""
    saved = {name: sys.modules.get(name) for name in _stub_modules(REPO)}
    sys.modules.update(_stub_modules(REPO))
    try:
        spec = importlib.util.spec_from_file_location("pointing_launch", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        description = module.generate_launch_description()
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    values = {e.name: e.default_value for e in description.entities if isinstance(e, _Argument)}
    unknown = set(arguments or {}) - set(values)
    if unknown:
        raise KeyError(f"the launch file declares no argument {sorted(unknown)}")
    values.update(arguments or {})

    def resolve(value) -> str:
        if isinstance(value, _Configuration):
            return values[value.name]
        if isinstance(value, (list, tuple)):
            return "".join(resolve(part) for part in value)
        return str(value)

    nodes = [e for e in description.entities if isinstance(e, _Node)]
    assert len(nodes) == 1, "the launch file starts exactly one node"
    kw = nodes[0].kwargs
    return LaunchedNode(
        package=kw["package"], executable=kw["executable"], name=kw.get("name", ""),
        namespace=resolve(kw.get("namespace", "")),
        params_files=[resolve(p) for p in kw.get("parameters", [])],
        remappings=[(resolve(a), resolve(b)) for a, b in kw.get("remappings", [])])


def node_ros_args(node: LaunchedNode) -> list[str]:
    """The ``--ros-args`` that ``ros2 launch`` gives this node: name, namespace, params
    files and remappings."""
    args = []
    if node.name:
        args += ["-r", f"__node:={node.name}"]
    if node.namespace:
        namespace = node.namespace if node.namespace.startswith("/") else "/" + node.namespace
        args += ["-r", f"__ns:={namespace}"]
    for params in node.params_files:
        args += ["--params-file", params]
    for source, target in node.remappings:
        args += ["-r", f"{source}:={target}"]
    return args


def node_executable(node: LaunchedNode) -> list[str]:
    """How to run the launched executable from the source tree (CMakeLists.txt installs
    scripts/<executable> as lib/videomolmo_ros/<executable>)."""
    executable = REPO / "scripts" / node.executable
    if not executable.exists():
        raise FileNotFoundError(f"no executable {executable}")
    return [sys.executable, str(executable)]
