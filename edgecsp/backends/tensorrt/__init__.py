"""TensorRT, in one package: the backend (backend.py), the engine builder (build.py), the runner
(runner.py), the TensorRT-rules Q/DQ model and calibration cache (qdq.py, calibcache.py), the
per-layer sensitivity pass (sensitivity.py), the ONNX Runtime stand-in runner for the Q/DQ model
(onnx_runner.py) and the bundle that a Jetson builds its engine from (bundle.py).

Nothing here imports TensorRT or CUDA at module level: only the functions that need them do, so a
host without either writes bundles and a device without PyTorch builds from them.
"""
