"""clip_image_preprocess: IMAGE BYTES [N, 1] (encoded files) -> pixel_values FP32 [N, 3, H, W].

Empty, oversized (bytes, pixels, aspect ratio, pixels after the resize), unlisted and corrupt images are
refused, each with its own error (INVALID_ARG); the limits are the config parameters max_image_bytes,
max_image_pixels, max_aspect_ratio and image_formats. Images are decoded one at a time, so at most one
full-size image is in memory per model instance.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils
from clip_preprocess import eval_pixels
from image_decode import ImageError, ImagePolicy, decode
from triton_io import InputError, input_items, model_config, parameters, respond


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        (output,) = config["output"]
        self.size = int(output["dims"][-1])
        limits = parameters(config)
        self.policy = ImagePolicy(int(limits["max_image_bytes"]), int(limits["max_image_pixels"]),
                                  float(limits["max_aspect_ratio"]), tuple(limits["image_formats"].split(",")))

    def execute(self, requests):
        return respond(requests, self.preprocess)

    def preprocess(self, request):
        pixels = [self.pixels(i, data) for i, data in enumerate(input_items(request, "IMAGE"))]
        return [pb_utils.Tensor("pixel_values", np.stack(pixels))]

    def pixels(self, index: int, data: bytes) -> np.ndarray:
        try:
            return eval_pixels(decode(data, self.policy, self.size), self.size)
        except ImageError as e:
            raise InputError(f"IMAGE[{index}]: {e}") from None
