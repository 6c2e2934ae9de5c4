"""Tensor and expert parallelism: the layout object every layer receives, how tensors split,
the collectives, and token dispatch to expert owners."""
