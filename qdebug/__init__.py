"""qdebug: layer-level quantization debugger for ONNX models deployed to edge NPUs."""

__version__ = "0.1.0"
