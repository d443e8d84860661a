"""Thin onnxruntime session wrapper shared by every ORT-based run (float, simulated, truncated)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from qdebug.errors import ModelError


class OrtSession:
    """An onnxruntime CPU session over an in-memory model, returning outputs by name."""

    def __init__(self, model: onnx.ModelProto, *, threads: int = 0, source: str | None = None,
                 optimize_all: bool = False) -> None:
        so = ort.SessionOptions()
        # BASIC keeps fake-quantized graphs bit-stable; float-only passes (calibration) may use every fusion
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize_all
                                       else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
        so.log_severity_level = 3
        # no busy-waiting between runs: qdebug alternates sessions and numpy work, which spinning
        # worker threads would slow down on a small machine
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            so.intra_op_num_threads = threads
        try:
            self.sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime cannot load the model: {msg}", file=source,
                             fix="check the opset/ops are supported by onnxruntime") from None
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self.input_names = [i.name for i in self.sess.get_inputs()]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one sample; returns every output by name."""
        try:
            vals = self.sess.run(None, {k: v for k, v in feed.items() if k in self.input_names})
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime failed while running: {msg}",
                             fix="check the input shapes/dtypes match the model") from None
        return dict(zip(self.output_names, vals, strict=True))
