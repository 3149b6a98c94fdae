"""Image preprocessing as CLIP was trained with: bicubic resize, centre crop, CLIP's mean and std."""

from __future__ import annotations

from torchvision import transforms as T

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def image_transform(image_size: int, train: bool = False) -> T.Compose:
    """PIL image -> normalised float tensor [3, image_size, image_size].

    Eval: shorter side to `image_size` (bicubic), centre crop. Train: random resized crop covering
    90-100% of the image, which CLIP used as its only augmentation.
    """
    if train:
        resize = [T.RandomResizedCrop(image_size, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC)]
    else:
        resize = [T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(image_size)]
    return T.Compose([*resize, T.Lambda(_to_rgb), T.ToTensor(), T.Normalize(MEAN, STD)])


def _to_rgb(image):
    return image.convert("RGB")
