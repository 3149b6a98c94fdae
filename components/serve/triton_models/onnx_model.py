"""An encoder (model.onnx beside this file) on ONNX Runtime's CPU provider, for Triton builds without
the ONNX Runtime backend (the cpu flavor).

All requests of one execute call go through the session as one batch, so the dynamic batcher's
batches reach the model whole; the outputs are split back per request.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from triton_io import error, model_config, parameters


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters(config).get("intra_op_thread_count", "0"))
        self.session = ort.InferenceSession(str(Path(__file__).parent / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])

    def execute(self, requests):
        feeds = {name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
                 for name in self.inputs}
        try:
            results = self.session.run(self.outputs, {name: np.concatenate(parts) for name, parts in feeds.items()})
        except Exception as e:
            return [error(f"ONNX Runtime failed: {e}")] * len(requests)
        bounds = np.cumsum([len(part) for part in feeds[self.inputs[0]]])[:-1]
        per_request = zip(*(np.split(result, bounds) for result in results))
        return [pb_utils.InferenceResponse([pb_utils.Tensor(name, np.ascontiguousarray(part))
                                            for name, part in zip(self.outputs, parts)])
                for parts in per_request]
