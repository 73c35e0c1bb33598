"""Pure logic: numpy only, no torch, no rclpy."""
