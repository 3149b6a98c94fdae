"""kubeclip's pipeline steps: each a plain function, a thin CLI and a thin KFP component."""
