"""Models: CSP building blocks, backbones, necks, heads and detectors, built from configs."""
