"""Test-wide settings: DDS stays on loopback and each run gets its own ROS domain."""
import os
import random

# Set before any test imports rclpy; inherited by the processes tests start.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
