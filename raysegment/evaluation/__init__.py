"""Evaluation drivers: a checkpoint against labelled data.

`evaluate` scores a checkpoint on a labelled split (the same input, forward, scoring and row builder as
bulk inference); `calibrate`, `shifts` and `qc_report` fit and judge the QC quality_score.
"""
