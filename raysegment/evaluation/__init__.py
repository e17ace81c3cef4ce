"""Scoring masks against ground truth.

`metrics` defines every metric once (dice, IoU, precision, recall, HD95) and exact sharded sums;
`scoring` is THE path from a probability map to the mask and its metrics (infer, evaluate and training's
test evaluation use it); `evaluate` scores a checkpoint on a labelled split; `calibrate`, `shifts` and
`qc_report` fit and judge the QC quality_score.
"""
