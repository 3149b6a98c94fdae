"""Image preprocessing as CLIP was trained with: bicubic resize, centre crop, CLIP's mean and std."""

from __future__ import annotations

import torch
from torchvision import transforms as T

from kubeclip.model.preprocess import MEAN, STD, eval_pixels


class EvalTransform:
    """PIL image -> [3, size, size]; the same function serving runs (model/preprocess.py)."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, image) -> torch.Tensor:
        return torch.from_numpy(eval_pixels(image, self.image_size))


def image_transform(image_size: int, train: bool = False, crop_scale: float = 0.9):
    """PIL image -> normalised float tensor [3, image_size, image_size].

    Eval: shorter side to `image_size` (bicubic), centre crop. Train: random resized crop covering
    `crop_scale`-100% of the image (CLIP's only augmentation, at 90%).
    """
    if not train:
        return EvalTransform(image_size)
    crop = T.RandomResizedCrop(image_size, scale=(crop_scale, 1.0), interpolation=T.InterpolationMode.BICUBIC)
    return T.Compose([crop, T.Lambda(_to_rgb), T.ToTensor(), T.Normalize(MEAN, STD)])


def _to_rgb(image):
    return image.convert("RGB")
