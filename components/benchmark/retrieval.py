"""Image-text retrieval on a caption split, with several captions per image (Flickr8k has five).

Image to text: an image scores a hit at k when any of its captions is among the k texts nearest to
it. Text to image: a caption scores a hit when its image is among the k images nearest to it. This
is how CLIP_benchmark and the CLIP paper count recall on Flickr and COCO.
"""

from __future__ import annotations

import torch

from kubeclip.components.benchmark.encoders import Encoder
from kubeclip.components.benchmark.features import embed_captioned

KS = (1, 5, 10)


def recall_at_k(images: torch.Tensor, texts: torch.Tensor, owners: torch.Tensor, ks: tuple[int, ...] = KS) -> dict:
    """{"i2t_r1", ..., "t2i_r10"} from normalised embeddings; `owners[j]` is the image of caption j."""
    similarity = images @ texts.T  # [N images, M texts]
    positive = owners[None, :] == torch.arange(len(images))[:, None]  # [N, M]: caption j describes image i
    result = {}
    for k in ks:
        nearest_texts = similarity.topk(min(k, similarity.shape[1]), dim=1).indices  # [N, k]
        result[f"i2t_r{k}"] = positive.gather(1, nearest_texts).any(dim=1).float().mean().item()
    for k in ks:
        nearest_images = similarity.T.topk(min(k, similarity.shape[0]), dim=1).indices  # [M, k]
        result[f"t2i_r{k}"] = (nearest_images == owners[:, None]).any(dim=1).float().mean().item()
    return result


def evaluate(encoder: Encoder, root: str, split: str = "test", max_images: int | None = None) -> dict:
    images, texts, owners = embed_captioned(encoder, root, split, max_images)
    return {**recall_at_k(images, texts, owners), "images": len(images), "texts": len(texts)}
