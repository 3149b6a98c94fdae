"""Zero-shot classification in one call: images and labels in, probabilities out."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from kubeclip.model.clip import CLIP
from kubeclip.model.prompts import ENSEMBLE, build_prompts
from kubeclip.model.transforms import image_transform


@torch.no_grad()
def zero_shot(model: CLIP, images, labels: list[str], templates=ENSEMBLE) -> torch.Tensor:
    """[len(images), len(labels)] probabilities, as the paper scores zero-shot classification: each label's
    classifier is the renormalised mean of its prompts' embeddings (OpenAI's ensemble by default), and
    the softmax runs over the model's scaled cosine similarities.

    `images`: file paths, PIL images, or a batch already preprocessed to [N, 3, H, W].
    """
    if not isinstance(images, torch.Tensor):
        transform = image_transform(model.image_size)
        images = torch.stack([transform(_rgb(image)) for image in images])
    device = next(model.parameters()).device
    image_features = model.encode_image(images.to(device), normalize=True)
    ids = model.tokenizer(build_prompts(list(labels), list(templates)), model.context_length).to(device)
    per_prompt = model.encode_text(ids, normalize=True).view(len(labels), len(templates), -1)
    classifier = F.normalize(per_prompt.mean(dim=1), dim=-1)
    return (model.logit_scale.exp() * image_features @ classifier.T).softmax(dim=-1)


def _rgb(image) -> Image.Image:
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image
