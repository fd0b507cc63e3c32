"""The SD1.5-family UNet as data: shipped architectures, the LDM checkpoint layout and its
mapping to backend names, and synthetic weights. Pure numpy, so the orchestrator and every
backend share one definition instead of each carrying its own; the one exception,
`mlx_unet.py` (the model in MLX), is imported only by the MLX backend."""
