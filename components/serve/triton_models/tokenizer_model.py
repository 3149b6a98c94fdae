"""clip_tokenizer: TEXT BYTES [N, 1] -> input_ids INT32 [N, L] (+ attention_mask INT32 [N, L]): the model's own
tokenizer (model/tokenizer.py, copied here as clip_bpe.py) from the tokenizer/ folder beside this file, CLIP's
BPE or, for a Hugging Face text tower, its `tokenizer.json` (the `tokenizers` library is imported only then),
which also gives the attention mask when the config lists `attention_mask` among the outputs. Empty,
non-UTF-8 and oversized texts are refused, each with its own error."""

from __future__ import annotations

from pathlib import Path

import clip_bpe
import numpy as np
import triton_python_backend_utils as pb_utils
from triton_io import InputError, input_items, model_config, parameters, respond


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        outputs = {output["name"]: output for output in config["output"]}
        self.max_text_bytes = int(parameters(config)["max_text_bytes"])
        self.tokenizer = clip_bpe.load_tokenizer(Path(__file__).parent / "tokenizer")
        self.context_length = int(outputs["input_ids"]["dims"][-1])
        self.with_mask = "attention_mask" in outputs
        if self.with_mask and not hasattr(self.tokenizer, "padded_ids_and_mask"):
            raise ValueError(f"the config asks for attention_mask, which a {type(self.tokenizer).__name__} "
                             "does not give (only Hugging Face tokenizers do)")

    def execute(self, requests):
        return respond(requests, self.tokenize)

    def tokenize(self, request):
        texts = [self.text(i, data) for i, data in enumerate(input_items(request, "TEXT"))]
        if not self.with_mask:
            return [pb_utils.Tensor("input_ids", np.asarray(self.tokenizer.padded_ids(texts, self.context_length),
                                                            dtype=np.int32))]
        ids, mask = self.tokenizer.padded_ids_and_mask(texts, self.context_length)
        return [pb_utils.Tensor("input_ids", np.asarray(ids, dtype=np.int32)),
                pb_utils.Tensor("attention_mask", np.asarray(mask, dtype=np.int32))]

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
