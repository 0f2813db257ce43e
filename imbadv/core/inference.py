"""Batched inference on uint8 image tensors, shared by training, evaluation and attacks."""

from __future__ import annotations

import contextlib
import sys

import torch
from torch import nn

from imbadv.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but no CUDA device is present: pass --device cpu")
    return torch.device(name)


def bf16_is_native(device: torch.device) -> bool:
    """Whether `device` has bf16 matrix units: a CUDA device that supports bf16, or a CPU where
    oneDNN finds AVX512-BF16 or AMX. Elsewhere bf16 convolutions fall back to slow reference
    kernels (on an AVX2-only CPU, 25x slower than fp32 at the paper's width)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_bf16(device: torch.device, precision: str) -> bool | None:
    """Under bf16, whether `device` runs it natively, with a warning on stderr when it does not;
    None under fp32."""
    if precision != "bf16":
        return None
    native = bf16_is_native(device)
    if not native:
        print(f"warning: --precision bf16 on {device}, which has no bf16 matrix units (no AVX512-BF16 or AMX): "
              "it runs far slower than fp32 here; pass --precision fp32", file=sys.stderr, flush=True)
    return native


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for, else a no-op (fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """Put the weights in channels_last (NHWC) or the default contiguous layout, in place.

    Convolutions follow their weights' layout, so inputs need no conversion; results agree with
    the default layout up to fp32 rounding.
    """
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 pixels in [0, 1]."""
    return images.float().div_(255.0)


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int,
                   precision: str = "fp32") -> torch.Tensor:
    """Logits (N, classes) in float32 for uint8 images (N, 3, 32, 32) on the model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = to_unit(images[start:start + batch_size].to(device, non_blocking=True))
        with autocast(device, precision):
            outputs.append(model(batch).float())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)
