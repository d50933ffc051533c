"""Darknet interop: parse .cfg files, build them as PyTorch modules, read/write .weights."""

from edgecsp.darknet.cfg import DarknetCfg, Section, parse_cfg, parse_cfg_text
from edgecsp.darknet.model import DarknetModel, LayerInfo
from edgecsp.darknet.weights import (
    WeightsHeader,
    darknet_param_count,
    load_darknet_weights_into,
    read_weights,
    save_darknet_weights_from,
    write_weights,
)

__all__ = [
    "DarknetCfg", "DarknetModel", "LayerInfo", "Section", "WeightsHeader", "darknet_param_count",
    "load_darknet_weights_into", "parse_cfg", "parse_cfg_text", "read_weights",
    "save_darknet_weights_from", "write_weights",
]
