"""Test-wide settings: DDS stays on loopback and each run gets its own ROS domain."""
import os
import random

import pytest

# Set before any test imports rclpy; inherited by the processes tests start.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for a module: the CI cores are shared, and oversubscribed threads spin."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
