"""Using a trained model: inference (images to predictions), ONNX/TorchScript export, the prediction server."""
