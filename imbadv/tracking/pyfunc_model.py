"""The MLflow pyfunc face of a registered model: ONNX inference, no torch and no pickle needed.

Logged as a model from code: MLflow runs this file to rebuild the model. `predict` takes float32
pixels in [0, 1] of shape (N, 3, 32, 32) and returns logits (N, classes).
"""

import numpy as np
import onnxruntime as ort
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class ImbadvClassifier(PythonModel):
    def load_context(self, context) -> None:
        self.session = ort.InferenceSession(context.artifacts["onnx"], providers=["CPUExecutionProvider"])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        if isinstance(model_input, dict):  # a named-tensor input
            (model_input,) = model_input.values()
        images = np.asarray(model_input, dtype=np.float32)
        return self.session.run(None, {self.session.get_inputs()[0].name: images})[0]


set_model(ImbadvClassifier())
