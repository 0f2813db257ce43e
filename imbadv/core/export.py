"""ONNX export of a trained model and its onnxruntime cross-check (a dynamic batch axis)."""

from __future__ import annotations

import contextlib
import copy
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
import onnxruntime as ort
import torch
from torch import nn

from imbadv.core.inference import predict_logits

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
OPSET = 18


class OnnxMismatch(RuntimeError):
    """onnxruntime and PyTorch disagree on too many images: the ONNX file does not match the weights."""


@dataclass(frozen=True)
class OnnxCheck:
    """How the ONNX model's logits compare with PyTorch's on the same images."""

    agreement: float  # share of images with the same argmax
    max_abs_diff: float  # largest absolute logit difference
    onnx_logits: np.ndarray


def export_onnx(model: nn.Module, path: str | Path) -> Path:
    """Export `model` (eval mode, on any device) to ONNX with a dynamic batch axis and check it."""
    path = Path(path)
    cpu_model = _cpu_copy(model)
    example = torch.rand(2, 3, 32, 32)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each pass
        torch.onnx.export(cpu_model, (example,), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=True,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, external_data=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def export_with_weights(template: onnx.ModelProto, model: nn.Module, path: str | Path) -> Path:
    """Write `template` (an export of another model of the same architecture) with `model`'s weights.

    The exporter names each weight's initializer by its state-dict key, so the graph is reused and
    only the tensors change; a template with any other floating-point initializer (a weight the
    exporter folded) is refused with ValueError, and the caller exports afresh.
    """
    path = Path(path)
    state = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}
    graph = onnx.ModelProto()
    graph.CopyFrom(template)
    seen = set()
    for index, tensor in enumerate(graph.graph.initializer):
        if tensor.name not in state:
            if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                                    onnx.TensorProto.DOUBLE):
                raise ValueError(f"initializer {tensor.name} is not a weight of the model: export afresh")
            continue
        value = state[tensor.name].numpy()
        if tuple(tensor.dims) != value.shape:
            raise ValueError(f"initializer {tensor.name} has shape {tuple(tensor.dims)}, the model {value.shape}")
        graph.graph.initializer[index].CopyFrom(numpy_helper.from_array(value, tensor.name))
        seen.add(tensor.name)
    if missing := set(state) - seen:
        raise ValueError(f"the template has no initializer for {sorted(missing)[:3]}: export afresh")
    onnx.save(graph, str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def _cpu_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("cpu").float().eval()


def onnx_session(path: str | Path, device: torch.device | None = None) -> ort.InferenceSession:
    """An onnxruntime session on the CUDA provider when the device is CUDA, else the CPU.

    On a CUDA device whose onnxruntime has no working CUDA provider (the plain CPU build, or CUDA
    libraries it cannot load), the session falls back to the CPU and says so on stderr;
    `session.get_providers()[0]` names the provider that runs.
    """
    providers = ["CPUExecutionProvider"]
    wants_cuda = device is not None and device.type == "cuda"
    if wants_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if wants_cuda and session.get_providers()[0] != "CUDAExecutionProvider":
        print(f"onnxruntime {ort.__version__} ({ort.get_device()} build) has no working CUDA provider here: the "
              "ONNX cross-check runs on the CPU (install onnxruntime-gpu matching the CUDA version for the GPU)",
              file=sys.stderr)
    return session


def onnx_logits(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Logits (N, classes) for uint8 images (N, 3, 32, 32)."""
    outputs = [session.run([OUTPUT_NAME], {INPUT_NAME: images[i:i + batch_size].astype(np.float32) / 255.0})[0]
               for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs)


def compare_with_torch(model: nn.Module, session: ort.InferenceSession, images: torch.Tensor,
                       batch_size: int = 1000, torch_logits: torch.Tensor | None = None) -> OnnxCheck:
    """Compare onnxruntime's logits with PyTorch's (fp32) on the same uint8 images."""
    if torch_logits is None:
        torch_logits = predict_logits(model, images, batch_size)
    reference = torch_logits.float().cpu().numpy()
    logits = onnx_logits(session, images.cpu().numpy(), batch_size)
    return OnnxCheck(agreement=float((logits.argmax(1) == reference.argmax(1)).mean()),
                     max_abs_diff=float(np.abs(logits - reference).max()), onnx_logits=logits)
