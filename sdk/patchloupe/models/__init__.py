"""patchloupe.models: Swin layers, window-attention dispatch and the pattern generator."""

from __future__ import annotations

from patchloupe.models.attention import (
    WindowAttention,
    attention_backend,
    default_attention_backend,
    resolve_backend,
    set_attention_backend,
    window_attention,
)
from patchloupe.models.generator import (
    PRESETS,
    GeneratorConfig,
    PatternGenerator,
    build_generator,
)
from patchloupe.models.layers import (
    DropPath,
    FinalPatchExpandX4,
    Mlp,
    PatchEmbed,
    PatchExpand,
    PatchMerging,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

__all__ = [
    "PRESETS",
    "GeneratorConfig",
    "PatternGenerator",
    "build_generator",
    "DropPath",
    "FinalPatchExpandX4",
    "Mlp",
    "PatchEmbed",
    "PatchExpand",
    "PatchMerging",
    "WindowAttention",
    "attention_backend",
    "default_attention_backend",
    "relative_position_index",
    "resolve_backend",
    "set_attention_backend",
    "shifted_window_mask",
    "window_attention",
    "window_partition",
    "window_reverse",
]
