"""How close an export (ONNX, Darknet files) must stay to the PyTorch model on real images.

Here, below both exporters, so the Darknet writer does not import the ONNX exporter for two numbers.
"""

# ONNX Runtime vs PyTorch on the demo detector: ~1e-4 px on boxes (a couple of float32 ulps at
# 300 px) and ~5e-6 on scores. The limits leave ~100x / ~20x room for other models and sizes,
# while a real export bug (a baked-in shape, a wrong op) is off by pixels or whole score units.
BOX_TOLERANCE_PX = 1e-2
SCORE_TOLERANCE = 1e-4
