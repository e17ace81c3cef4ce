"""Postprocessing: the product's own stage between the model and the outputs.

`masks` turns a probability map into a clean mask at the original resolution (threshold, components,
holes, right/left sides) with its measurements and QC reasons (with their severity); `ctr` is the
cardiothoracic ratio from lung and heart masks; `quality` applies the calibrated quality_score;
`metrics` defines every metric once (dice, IoU, precision, recall, HD95) and exact sharded sums;
`scoring` is THE path from a model probability to masks, QC and metrics that bulk inference, `predict`,
`evaluate`, calibration and training's test evaluation all call.
"""
