"""Container images of the KFP components: the one place that names them."""

# The project image (this package and its dependencies); lightweight components run their body in it.
RUNTIME_IMAGE = "ghcr.io/kubeclip/kubeclip:0.1.0"
# The GPU training image (CUDA PyTorch base plus this package).
TRAIN_IMAGE = "ghcr.io/kubeclip/kubeclip-train:0.1.0"
