"""NVIDIA Jetson, the device: profiles and detection (profiles.py) and tegrastats monitoring.

Everything about TensorRT (the builder, the runner, Q/DQ and calibration caches, the bundle that is
built on the device) lives in the TensorRT backend package, edgecsp.backends.tensorrt.
"""
