"""Training: anchors, augmentation, YOLO loss, the training loop."""
