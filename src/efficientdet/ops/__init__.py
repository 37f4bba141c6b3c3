"""Tensor operations around the network: boxes, anchors, box coding, NMS."""
