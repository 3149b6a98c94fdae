"""The Kubeflow pipeline(s) wiring kubeclip's components."""
