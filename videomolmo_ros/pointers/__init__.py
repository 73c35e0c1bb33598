"""Pointers turn a keyframe (plus its history) and text queries into points."""
