"""SwishNet in PyTorch, the training corpus, training, evaluation, and the shipped models.

Importing this package is cheap and needs no torch: the runtime finds the
bundled ONNX files here with importlib.resources.
"""
