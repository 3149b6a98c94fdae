"""Embeddings from a Triton serving a kubeclip repository: the ensembles over gRPC or HTTP (tritonclient).

tritonclient's protocol module is imported on first use: `tritonclient.grpc` and `kserve` register
the same proto symbols and cannot be imported into one process.
"""

from __future__ import annotations

import importlib

import numpy as np

EMBED_TEXT, EMBED_IMAGE = "clip_embed_text", "clip_embed_image"
PROTOCOLS = ("grpc", "http")


class EmbeddingClient:
    """Sends texts and encoded images to the ensembles in batches of up to their max_batch_size ([N, 1] BYTES
    in, [N, D] FP32 out). Server errors raise tritonclient's InferenceServerException with Triton's message."""

    def __init__(self, url: str, protocol: str = "grpc", timeout: float = 60):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        self.protocol, self.timeout = protocol, timeout
        self._tc = importlib.import_module(f"tritonclient.{protocol}")
        self.client = self._tc.InferenceServerClient(url=url.split("://", 1)[-1])
        self._configs: dict[str, dict] = {}

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def config(self, model: str) -> dict:
        """The model's configuration as Triton reports it (JSON form)."""
        if model not in self._configs:
            if self.protocol == "grpc":
                self._configs[model] = self.client.get_model_config(model, as_json=True)["config"]
            else:
                self._configs[model] = self.client.get_model_config(model)
        return self._configs[model]

    def model_id(self) -> str:
        return self.config(EMBED_IMAGE)["parameters"]["kubeclip_model_id"]["string_value"]

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self._embed(EMBED_TEXT, "TEXT", [t.encode("utf-8") for t in texts])

    def embed_images(self, images: list[bytes]) -> np.ndarray:
        return self._embed(EMBED_IMAGE, "IMAGE", list(images))

    def _embed(self, model: str, input_name: str, items: list[bytes]) -> np.ndarray:
        config = self.config(model)
        batch = int(config["max_batch_size"])
        chunks = [self.infer(model, input_name, items[start:start + batch]) for start in range(0, len(items), batch)]
        dim = int(config["output"][0]["dims"][0])
        return np.concatenate(chunks) if chunks else np.zeros((0, dim), dtype=np.float32)

    def infer(self, model: str, input_name: str, items: list[bytes]) -> np.ndarray:
        """One request: `items` as BYTES [N, 1]; returns EMBEDDING [N, D]."""
        data = np.array(items, dtype=object).reshape(-1, 1)
        tensor = self._tc.InferInput(input_name, list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)
        timeout = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        return self.client.infer(model, [tensor], **timeout).as_numpy("EMBEDDING")
