"""videomolmo_ros: VideoMolmo pointing and mask tracking for ROS 2.

The generated ROS interfaces (``videomolmo_ros.msg``, ``videomolmo_ros.srv``) are
installed by rosidl into a prefix of their own; ``extend_path`` lets this source
package and that generated one act as a single package.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
