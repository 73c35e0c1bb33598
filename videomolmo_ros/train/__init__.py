"""Training the project's small VideoMolmo on synthetic referring videos.

tokenizer: a small byte-level BPE laid out like Molmo's vocabulary. presets: model sizes.
dataset: (keyframe, history, queries, point-text answers) samples. trainer: the loop, checkpoints
and the release-layout export. ``python -m videomolmo_ros.train`` is the command line.
"""
