"""Scoring masks against ground truth.

`metrics` defines every metric once (dice, IoU, precision, recall, HD95) and exact sharded sums;
`evaluate` scores a checkpoint on a labelled split.
"""
