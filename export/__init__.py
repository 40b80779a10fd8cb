"""signguard export: torch model -> ONNX -> deployment bundle (manifest + hashes) -> [FP16/INT8/TensorRT].

Takes ``nn.Module`` objects (never imports ``train``); torch is imported
inside the converters so that listing the CLI needs no torch.
"""
