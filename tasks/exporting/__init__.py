"""Helpers, concern exporting: the trained model as ONNX (torch.export), its int8 quantisation, and an
onnxruntime session that scores words as the torch network does (`onnx`)."""
