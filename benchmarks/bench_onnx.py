"""onnxruntime CPU inference against PyTorch eager inference on the same batch and model.

Result (2 CPU cores, VGG width 16, batch 500, --images 2000 --repeats 3): onnxruntime CPU fp32 infers 2.77x
the images/s of PyTorch eager fp32 (2,318 img/s); eager channels_last 1.81x, eager bf16 2.36x.

    python benchmarks/bench_onnx.py [--width 16] [--batch 500] [--images 2000]
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from common import arguments, model, print_table, test_images, timed

from imbadv.core.export import export_onnx, onnx_logits, onnx_session
from imbadv.core.inference import predict_logits, set_layout


def main() -> None:
    args = arguments(__doc__)
    images, _ = test_images(args)
    network = model(args.width)
    tensor = torch.from_numpy(images)
    nhwc_network = set_layout(copy.deepcopy(network), channels_last=True)
    with tempfile.TemporaryDirectory() as tmp:
        session = onnx_session(export_onnx(network, Path(tmp) / "model.onnx"))
        seconds = timed({
            "pytorch eager fp32 (inference_mode)": lambda: predict_logits(network, tensor, args.batch),
            "pytorch eager fp32 channels_last (cpu preset)": lambda: predict_logits(nhwc_network, tensor, args.batch),
            "pytorch eager bf16 autocast": lambda: predict_logits(network, tensor, args.batch, "bf16"),
            "onnxruntime CPUExecutionProvider fp32": lambda: onnx_logits(session, images, args.batch),
        }, args.repeats)
    print_table(f"Inference, VGG width {args.width}, batch {args.batch}", len(images), seconds,
                "pytorch eager fp32 (inference_mode)")


if __name__ == "__main__":
    main()
