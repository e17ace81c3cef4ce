"""Datasets and preprocessing: labelled pairs, splits, model inputs and synthetic X-rays.

`datasets` finds (image, mask) pairs in the supported layouts and splits them by a hash of the image id;
`model_input` is THE path from a file's bytes to the model input (decode, inversion check, preprocess)
every command takes; `preprocess` maps any image to the uint8 SxS model input and back; `inversion`
detects and undoes inverted exports; `augment` perturbs training batches; `synth` draws phantom chest
X-rays with masks for the demo and tests.
"""
