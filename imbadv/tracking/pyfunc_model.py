"""The MLflow pyfunc face of a registered model: ONNX inference, no torch and no pickle needed.

Logged as a model from code: MLflow runs this file to rebuild the model, so it imports nothing from
imbadv. `predict` takes images as uint8 (0-255) or float ([0, 1]) pixels, channels first
(N, 3, 32, 32) or last (N, 32, 32, 3), and returns a DataFrame with one row per image, in input
order: the predicted class name and index, and each class's probability (`p_<class>`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

CLASS_COLUMN = "class_name"
INDEX_COLUMN = "class_index"
PROBABILITY_PREFIX = "p_"
BATCH = 256  # images per onnxruntime call: bounds the activations' memory on large inputs


def probability_columns(class_names: Sequence[str]) -> list[str]:
    """`p_<class>` for each class, in class-index order."""
    return [f"{PROBABILITY_PREFIX}{name}" for name in class_names]


def _refuse(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)  # one line; a served model answers 400


def to_unit_nchw(images: Any, chw: tuple[int, int, int]) -> np.ndarray:
    """float32 (N, C, H, W) pixels in [0, 1] from uint8 / integer (0-255) or float ([0, 1]) images,
    channels first or last; anything else is refused with a one-line error that names the fix."""
    if isinstance(images, dict) and len(images) == 1:  # a named-tensor input
        (images,) = images.values()
    channels, height, width = chw
    shapes = f"(N, {channels}, {height}, {width}) or (N, {height}, {width}, {channels})"
    try:
        array = np.asarray(images)
    except ValueError:  # ragged nested lists
        raise _refuse(f"images are not one rectangular array: pass a {shapes} array") from None
    if array.ndim == 4 and array.shape[1:] == chw:
        nchw = array
    elif array.ndim == 4 and array.shape[1:] == (height, width, channels):
        nchw = array.transpose(0, 3, 1, 2)
    else:
        hint = ": add a batch axis (images[None])" if array.ndim == 3 else ""
        raise _refuse(f"images of shape {array.shape} do not fit: pass {shapes} arrays{hint}")
    if nchw.dtype.kind not in "uif":
        raise _refuse(f"images of dtype {nchw.dtype} are not pixels: pass uint8 (0-255) or float ([0, 1]) images")
    if nchw.size == 0:
        return nchw.astype(np.float32)
    low, high = nchw.min(), nchw.max()
    if nchw.dtype.kind in "ui":
        if low < 0 or high > 255:
            raise _refuse(f"integer pixels must be 0-255, got {low} to {high}: pass uint8 images")
        return np.ascontiguousarray(nchw, dtype=np.float32) / np.float32(255)
    if not (low >= 0.0 and high <= 1.0):  # NaN fails both
        raise _refuse(f"float pixels must be in [0, 1], got {low:g} to {high:g}: divide 0-255 floats by 255, "
                      "or pass uint8 images")
    return np.ascontiguousarray(nchw, dtype=np.float32)


def predictions_frame(logits: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Class name, class index and softmax probabilities (float64) per row of (N, classes) logits."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    index = probabilities.argmax(axis=1)
    frame = pd.DataFrame(probabilities, columns=probability_columns(class_names))
    frame.insert(0, INDEX_COLUMN, index.astype(np.int64))
    frame.insert(0, CLASS_COLUMN, np.asarray(class_names, dtype=object)[index])
    return frame


class ImbadvClassifier(PythonModel):
    def load_context(self, context) -> None:
        self.session = ort.InferenceSession(context.artifacts["onnx"], providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.chw = tuple(self.session.get_inputs()[0].shape[1:])  # (3, 32, 32); axis 0 is the batch
        with open(context.artifacts["spec"]) as spec:
            self.class_names = json.load(spec)["class_names"]

    # np.ndarray is a hint MLflow 3 neither derives a schema from nor validates against (it would
    # refuse what a schema does not name: uint8 or float, NCHW or NHWC); lists and dicts pass too.
    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        images = to_unit_nchw(model_input, self.chw)
        logits = [self.session.run(None, {self.input_name: images[start:start + BATCH]})[0]
                  for start in range(0, len(images), BATCH)]
        stacked = np.concatenate(logits) if logits else np.zeros((0, len(self.class_names)), np.float32)
        return predictions_frame(stacked, self.class_names)


set_model(ImbadvClassifier())
