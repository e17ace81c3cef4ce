"""The model: the UNet itself, its checkpoints and its exports.

`unet` is the seed UNet (DoubleConv / Down / Up); `checkpoint` saves and loads weights plus everything
needed to use them (`load_model` needs no Ray); `export` writes ONNX / TorchScript, verified against
PyTorch.
"""
