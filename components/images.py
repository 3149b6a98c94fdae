"""Container images of the KFP components: the one place that names them."""

# The project image (this package and its dependencies); lightweight components run their body in it.
RUNTIME_IMAGE = "ghcr.io/kubeclip/kubeclip:0.1.0"
# The GPU training image (CUDA PyTorch base plus this package).
TRAIN_IMAGE = "ghcr.io/kubeclip/kubeclip-train:0.1.0"
# The Triton serving image (a Triton release plus what the Python-backend models need).
TRITON_IMAGE = "ghcr.io/kubeclip/kubeclip-triton:0.1.0"
