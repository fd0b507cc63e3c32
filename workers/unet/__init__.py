"""The SD1.5-family UNet as a model, one per toolchain: `torch_unet.py` (a diffusers module,
shared by the diffusers backend and the Core ML converters) and `mlx_unet.py` (the UNet in MLX,
imported only by the MLX backend). Both build from the same presets and read the same weights
through the one key table in workers/contract/ (presets.py, layout.py, checkpoint.py)."""
