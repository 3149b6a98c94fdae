"""clip_image_preprocess: IMAGE BYTES [N, 1] (encoded files) -> pixel_values FP32 [N, 3, H, W].

Empty, oversized (bytes or pixels), unknown and corrupt images are refused, each with its own error;
the limits are the config parameters max_image_bytes and max_image_pixels.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils
from clip_preprocess import eval_pixels
from image_decode import ImageError, decode
from triton_io import InputError, input_items, model_config, parameters, respond


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        (output,) = config["output"]
        self.size = int(output["dims"][-1])
        limits = parameters(config)
        self.max_bytes, self.max_pixels = int(limits["max_image_bytes"]), int(limits["max_image_pixels"])

    def execute(self, requests):
        return respond(requests, self.preprocess)

    def preprocess(self, request):
        pixels = [self.pixels(i, data) for i, data in enumerate(input_items(request, "IMAGE"))]
        return [pb_utils.Tensor("pixel_values", np.stack(pixels))]

    def pixels(self, index: int, data: bytes) -> np.ndarray:
        try:
            return eval_pixels(decode(data, self.max_bytes, self.max_pixels), self.size)
        except ImageError as e:
            raise InputError(f"IMAGE[{index}]: {e}") from None
