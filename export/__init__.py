"""Checkpoint to ONNX export, int8 quantisation and parity checks."""
