"""The build step: ONNX export, TensorRT plugin registration, engine build and manifest."""
