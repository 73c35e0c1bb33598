"""VideoMolmo in PyTorch (issue 3): config, multi-crop pre-processing, vision encoder, temporal
module, the assembled model, checkpoint loading and the pointer. Needs torch and transformers;
nothing here is imported by ``videomolmo_ros.core``."""
