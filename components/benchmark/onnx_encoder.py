"""The Encoder interface over an export folder's ONNX towers, run by ONNX Runtime on the CPU."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from PIL import Image

from kubeclip import model
from kubeclip.model.config import CLIPConfig
from kubeclip.model.tokenizer import load_tokenizer


class OnnxEncoder:
    def __init__(self, export_dir: str | Path, image_model: str = "image_encoder.onnx",
                 text_model: str = "text_encoder.onnx", batch_size: int = 64):
        export_dir = Path(export_dir)
        config = CLIPConfig.from_dict(json.loads((export_dir / "config.json").read_text()))
        self.transform = model.image_transform(config.vision.image_size)
        self.tokenizer = load_tokenizer(export_dir / "tokenizer")
        self.context_length = config.text.context_length
        self.image = ort.InferenceSession(str(export_dir / image_model), providers=["CPUExecutionProvider"])
        self.text = ort.InferenceSession(str(export_dir / text_model), providers=["CPUExecutionProvider"])
        self.takes_mask = "attention_mask" in {i.name for i in self.text.get_inputs()}
        self.batch_size = batch_size

    def encode_images(self, images: list[bytes]) -> torch.Tensor:
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = np.stack([self.transform(Image.open(io.BytesIO(data))).numpy()
                               for data in images[start:start + self.batch_size]])
            out.append(self.image.run(["embedding"], {"pixel_values": pixels})[0])
        return F.normalize(torch.from_numpy(np.concatenate(out)).float(), dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            if self.takes_mask:  # a Hugging Face text tower: the tokenizer's ids and attention mask
                ids, mask = self.tokenizer.padded_ids_and_mask(batch, self.context_length)
                feeds = {"input_ids": np.asarray(ids, dtype=np.int32), "attention_mask": np.asarray(mask, dtype=np.int32)}
            else:
                feeds = {"input_ids": self.tokenizer(batch, self.context_length).int().numpy()}
            out.append(self.text.run(["embedding"], feeds)[0])
        return F.normalize(torch.from_numpy(np.concatenate(out)).float(), dim=-1)
