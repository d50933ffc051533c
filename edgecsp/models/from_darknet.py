"""A native zoo detector from a Darknet cfg (and .weights), for fine-tuning with edgecsp.train.

The zoo's PANet-SPP detectors are the published CSP cfgs layer for layer, so a cfg is matched to
the zoo detector whose convolutions are the same sequence, and its .weights load by order. The
cfg's anchors, scale_x_y, input size and classes come along. With a different number of classes,
everything but the three prediction convolutions keeps the cfg's weights (the usual transfer).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from edgecsp.errors import EdgeCSPError, shown
from edgecsp.models.detector import DETECTORS, Detector, build_detector


def _conv_signature(module: nn.Module, skip_last: int = 0) -> list[tuple[int, ...]]:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    sig = [(m.in_channels, m.out_channels, *m.kernel_size, *m.stride, m.groups, m.bias is None) for m in convs]
    return sig[: len(sig) - skip_last] if skip_last else sig


def detector_from_cfg(cfg_path: str | Path, weights: str | Path | None = None,
                      num_classes: int | None = None) -> tuple[Detector, str]:
    """Returns (detector, zoo name it matched)."""
    from edgecsp.darknet import DarknetModel, load_darknet_weights_into, parse_cfg

    cfg = parse_cfg(cfg_path)
    darknet = DarknetModel(cfg, input_size=64)
    yolo = darknet.yolo_layers
    if len(yolo) != 3:
        raise EdgeCSPError(f"{shown(cfg_path)} has {len(yolo)} [yolo] layers; edgecsp's detectors have 3 output levels")
    # The detector's input_size comes from [net]; it was only built at 64 above, so check it here.
    if cfg.height != cfg.width or cfg.height < 32 or cfg.height % 32:
        raise cfg.net.error(f"height={cfg.height}, width={cfg.width}: fine-tuning needs a square input "
                            "size that is a multiple of 32")
    anchors = tuple(tuple(float(v) for v in a) for layer in yolo for a in layer.anchors)
    scale_xy = tuple(float(layer.scale_x_y) for layer in yolo)
    overrides = {"anchors": anchors, "scale_xy": scale_xy if len(set(scale_xy)) > 1 else scale_xy[0],
                 "new_coords": bool(yolo[0].new_coords), "num_classes": yolo[0].classes, "input_size": cfg.height}
    target = _conv_signature(darknet)
    for name, config in DETECTORS.items():
        if config.neck != "panet-spp":
            continue
        try:
            candidate = build_detector(name, **overrides)
        except EdgeCSPError as err:  # e.g. anchors from the cfg that no detector accepts; name the file
            raise EdgeCSPError(f"{shown(cfg_path)}: {err}") from None
        if _conv_signature(candidate) == target:
            break
    else:
        raise EdgeCSPError(f"{shown(cfg_path)} is not one of the zoo's detector architectures "
                           f"({', '.join(n for n, c in DETECTORS.items() if c.neck == 'panet-spp')}); "
                           "fine-tuning needs a native equivalent")
    if weights is not None:
        load_darknet_weights_into(candidate, weights)
    if num_classes is None or num_classes == candidate.config.num_classes:
        return candidate, name
    # New classes: fresh prediction convs, every other weight transferred.
    model = build_detector(candidate.config.with_overrides(num_classes=num_classes))
    from edgecsp.models.transfer import load_all_but

    if not load_all_but(candidate, model, [c.conv for c in candidate.neck.prediction_convs()]):
        raise EdgeCSPError(f"could not transfer the weights of {shown(cfg_path)} to {num_classes} classes")
    return model, name
