"""Normalisation inside the compiled OpenVINO model (its PrePostProcessor): the model takes the
letterboxed uint8 NHWC frame and does the float conversion, the /255 and the NHWC -> NCHW
transpose itself, fused into its first layer, instead of numpy doing them on the host.

The resize stays on the host (edgecsp.data.preprocess): the letterbox geometry is exact there, and
a PrePostProcessor resize would stretch to the input size instead of letterboxing.
"""

from __future__ import annotations

from typing import Any


def with_u8_input(model: Any) -> Any:
    """``model`` (an ov.Model taking float32 NCHW in [0, 1]) taking uint8 NHWC in [0, 255] instead."""
    from openvino import Layout, Type  # type: ignore[import-untyped]
    from openvino.preprocess import PrePostProcessor  # type: ignore[import-untyped]

    ppp = PrePostProcessor(model)
    port = ppp.input(0)
    port.tensor().set_element_type(Type.u8).set_layout(Layout("NHWC"))
    port.model().set_layout(Layout("NCHW"))
    port.preprocess().convert_element_type(Type.f32).scale(255.0)
    return ppp.build()
