"""The one interface the metrics talk to: encode image bytes and texts into L2-normalised embeddings.

Backends (PyTorch here; ONNX Runtime and Triton beside it) differ only in how they run the towers,
so every metric gives comparable numbers whichever one computed the embeddings.
"""

from __future__ import annotations

import io
from typing import Protocol

import torch
import torch.nn.functional as F
from PIL import Image

from kubeclip import model


class Encoder(Protocol):
    def encode_images(self, images: list[bytes]) -> torch.Tensor: ...  # [N, D], normalised

    def encode_texts(self, texts: list[str]) -> torch.Tensor: ...  # [N, D], normalised


class TorchEncoder:
    def __init__(self, clip: model.CLIP, device: str | torch.device = "cpu", batch_size: int = 256):
        self.clip = clip.eval().to(device)
        self.device, self.batch_size = torch.device(device), batch_size
        self.transform = model.image_transform(clip.image_size)

    @torch.no_grad()
    def encode_images(self, images: list[bytes]) -> torch.Tensor:
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.transform(Image.open(io.BytesIO(data)))
                                  for data in images[start:start + self.batch_size]])
            out.append(self.clip.encode_image(pixels.to(self.device)).float())
        return F.normalize(torch.cat(out), dim=-1).cpu()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            ids = self.clip.tokenizer(texts[start:start + self.batch_size], self.clip.context_length)
            if not self.clip.has_hf_text:  # a Hugging Face tower drops its padding itself
                # text attention is causal and pools at end-of-text (the largest id), so the padding after
                # the batch's last end-of-text changes nothing: dropping it makes short prompts ~5x cheaper
                ids = ids[:, : int(ids.argmax(dim=-1).max()) + 1]
            out.append(self.clip.encode_text(ids.to(self.device)).float())
        return F.normalize(torch.cat(out), dim=-1).cpu()
