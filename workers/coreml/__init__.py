"""Core ML conversion of the harness's UNet: attention rewrites, tracing, `ct.convert`,
palettization, spec checks and a conversion cache. Runs on any host with coremltools; only
prediction (workers.backends.coreml_backend) needs macOS."""
