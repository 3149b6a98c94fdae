"""clip_tokenizer: TEXT BYTES [N, 1] -> input_ids INT32 [N, L]: CLIP's BPE (model/tokenizer.py, copied here as
clip_bpe.py) with the vocabulary in the tokenizer/ folder beside this file. Empty, non-UTF-8 and oversized
texts are refused, each with its own error."""

from __future__ import annotations

from pathlib import Path

import clip_bpe
import numpy as np
import triton_python_backend_utils as pb_utils
from triton_io import InputError, input_items, model_config, parameters, respond


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        (output,) = config["output"]
        self.max_text_bytes = int(parameters(config)["max_text_bytes"])
        self.tokenizer = clip_bpe.load_tokenizer(Path(__file__).parent / "tokenizer")
        self.context_length = int(output["dims"][-1])

    def execute(self, requests):
        return respond(requests, self.tokenize)

    def tokenize(self, request):
        texts = [self.text(i, data) for i, data in enumerate(input_items(request, "TEXT"))]
        ids = np.asarray(self.tokenizer.padded_ids(texts, self.context_length), dtype=np.int32)
        return [pb_utils.Tensor("input_ids", ids)]

    def text(self, index: int, data: bytes) -> str:
        if len(data) > self.max_text_bytes:
            raise InputError(f"TEXT[{index}]: {len(data)} bytes is over the limit of {self.max_text_bytes}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"TEXT[{index}]: not valid UTF-8") from None
        if not text.strip():
            raise InputError(f"TEXT[{index}]: empty text; send at least one non-space character")
        return text
