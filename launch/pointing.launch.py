"""Start the VideoMolmo pointing node on a real ROS 2 install.

    ros2 launch videomolmo_ros pointing.launch.py image_topic:=/camera/color/image_raw

Arguments: ``config`` (params file, default: this package's config/pointing.yaml),
``namespace``, ``camera`` (the camera name of the params file whose input is remapped) and
``image_topic`` (where that camera's images come from; ``<image_topic>/compressed`` is used
for sensor_msgs/CompressedImage).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    default_config = os.path.join(get_package_share_directory("videomolmo_ros"), "config",
                                  "pointing.yaml")
    config = LaunchConfiguration("config")
    camera = LaunchConfiguration("camera")
    image_topic = LaunchConfiguration("image_topic")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default_config,
                              description="parameters file of the node"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node and its topics"),
        DeclareLaunchArgument("camera", default_value="camera",
                              description="camera name (from the params file) to remap"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="image topic of that camera"),
        Node(
            package="videomolmo_ros",
            executable="pointing_node",
            name="videomolmo_pointing",
            namespace=LaunchConfiguration("namespace"),
            parameters=[config],
            remappings=[
                ([camera, "/image_raw"], image_topic),
                ([camera, "/image_raw/compressed"], [image_topic, "/compressed"]),
            ],
            output="screen",
            emulate_tty=True,
        ),
    ])
