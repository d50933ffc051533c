"""NVIDIA Jetson: device profiles and detection, TensorRT-rules Q/DQ and calibration caches,
deployable bundles (engine built on the device), and tegrastats monitoring.

Nothing here imports TensorRT or CUDA: the backend (edgecsp.backends.tensorrt_backend) does,
inside its functions, so all of this works on a machine without either.
"""
