"""What tface's own plugin distributions provide, so a minimal install can say what to add.

The core never imports another tface distribution; it only knows their names and the component names
their entry points register (a test compares this table with the installed distributions' entry points).
"""

from __future__ import annotations

__all__ = ["DISTRIBUTIONS", "provider", "providers_of"]

_IR = ("ir_18", "ir_34", "ir_50", "ir_101", "ir_152", "ir_200", "ir_se_50", "ir_se_101", "ir_se_152", "ir_se_200")
_IRESNET = ("iresnet_18", "iresnet_34", "iresnet_50", "iresnet_100", "iresnet_200")

#: distribution -> kind -> every name it registers (aliases included)
DISTRIBUTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "tface-backbones": {
        "backbones": (
            "mobilefacenet", "MobileFaceNet", *_IR, *(n.upper() for n in _IR),
            "resnet_50", "resnet_101", "resnet_152", "ResNet_50", "ResNet_101", "ResNet_152",
            *_IRESNET, *(n.replace("_", "") for n in _IRESNET), *(f"r{n.rpartition('_')[2]}" for n in _IRESNET),
            "ghostnet", "GhostNet", "efficientnet_b0", "efficientnet_b1", "EfficientNetB0", "EfficientNetB1",
            "fbnet_a", "fbnet_b", "fbnet_c",
        ),
        "plugins": ("backbone-commands", "backbone-weights"),
    },
    "tface-heads": {
        "heads": ("arcface", "cosface", "curricularface", "CurricularFace", "normface", "NormFace", "sphereface",
                  "cifp", "Cifp", "CIFP", "adaface", "magface", "subcenter_arcface"),
        "losses": ("softmax", "focal", "triplet"),
    },
    "tface-augment": {"augmenters": (
        "hflip", "flip", "rotate", "shift", "random_resized_crop", "color_jitter", "grayscale", "autocontrast",
        "equalize", "posterize", "solarize", "sharpness", "blur", "motion_blur", "jpeg", "lowres", "noise",
        "random_erasing", "mask", "glasses", "headscarf",
    ), "plugins": ("augment-commands",)},
    "tface-eval": {"protocols": ("verification", "ijb", "rfw")},
    "tface-methods": {"losses": ("ddl",), "methods": ("ddl", "scf")},
    "tface-quality": {"datasets": ("quality_list",), "methods": ("quality_regression",), "protocols": ("evrc",),
                      "plugins": ("quality-commands",)},
}


def provider(kind: str, name: str) -> str | None:
    """The tface distribution that registers ``name`` as a ``kind`` component, if one does."""
    return next((dist for dist, kinds in DISTRIBUTIONS.items() if name in kinds.get(kind, ())), None)


def providers_of(kind: str) -> list[str]:
    """tface distributions that register ``kind`` components."""
    return [dist for dist, kinds in DISTRIBUTIONS.items() if kinds.get(kind)]
