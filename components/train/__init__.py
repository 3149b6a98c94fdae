"""The train step: contrastive pre-training (`kubeclip train`, or `torchrun -m kubeclip.components.train`)."""
