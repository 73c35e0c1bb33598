"""Dataset tools: synthetic referring-video scenes with exact ground truth (numpy + OpenCV)."""
