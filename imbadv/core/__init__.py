"""The pure PyTorch core: data, sampling, the model, training, attacks, inference, metrics, ONNX.

Nothing here imports MLflow or any other imbadv layer except `imbadv.config`.
"""
