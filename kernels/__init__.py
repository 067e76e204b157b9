"""patchloupe.kernels: fused GPU kernels (Triton)."""
