"""Our CLIP against open_clip's: same weights in, same embeddings out, same state-dict layout both ways."""

import warnings

import pytest
import torch
from open_clip.model import CLIP as OpenClipCLIP

from kubeclip import model

CONFIGS = ["tiny-vit", "tiny-rn", "ViT-B-32-quickgelu", "RN50-quickgelu"]


def open_clip_model(name: str) -> OpenClipCLIP:
    """open_clip's CLIP built from our config dict (the JSON layouts are the same)."""
    cfg = model.get_config(name).to_dict()
    return OpenClipCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg["quick_gelu"])


def random_open_clip(name: str) -> OpenClipCLIP:
    """open_clip's model from our config dict, every parameter and BatchNorm statistic randomised."""
    torch.manual_seed(0)
    oc = open_clip_model(name)
    with torch.no_grad():
        for param in oc.parameters():
            param.normal_(0, 0.02 if param.dim() > 1 else 0.1)
        for buf_name, buf in oc.named_buffers():
            if buf_name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
            elif buf_name.endswith("running_mean"):
                buf.normal_(0, 0.1)
    return oc.eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_embeddings_match_open_clip(name, tmp_path):
    oc = random_open_clip(name)
    # open_clip's training script saves {"epoch", "name", "state_dict"} with DDP's "module." prefix
    checkpoint = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": name, "state_dict": {f"module.{k}": v for k, v in oc.state_dict().items()}},
               checkpoint)
    ours = model.load(checkpoint, config=name)

    torch.manual_seed(1)
    images = torch.randn(3, 3, ours.image_size, ours.image_size)
    ids = model.tokenize(["a photo of a cat.", "", "a dog " * 60])
    with torch.no_grad():
        assert (ours.encode_image(images) - oc.encode_image(images)).abs().max() <= 1e-4
        assert (ours.encode_text(ids) - oc.encode_text(ids)).abs().max() <= 1e-4


@pytest.mark.parametrize("name", CONFIGS)
def test_state_dict_round_trips_both_ways(name, tmp_path):
    oc = random_open_clip(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bare state dict: the QuickGELU warning is tested elsewhere
        ours = model.load(oc.state_dict())  # architecture inferred from shapes alone
    assert ours.config.to_dict() == {**model.get_config(name).to_dict(), "quick_gelu": True}

    theirs, mine = oc.state_dict(), ours.state_dict()
    assert list(mine) == list(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in theirs)

    model.save(ours, tmp_path)
    back = open_clip_model(name)
    back.load_state_dict(model.load(tmp_path).state_dict(), strict=True)
    for key, value in back.state_dict().items():
        assert torch.equal(value, theirs[key]), key
