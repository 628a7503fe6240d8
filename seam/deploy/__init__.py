"""Using and measuring a re-engineered model (stages `export`, `flops`, `benchmark`; `seam
predict`): ONNX export, FLOPs, latency on DeepSparse / onnxruntime / torch, prediction."""
