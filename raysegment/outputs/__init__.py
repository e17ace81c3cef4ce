"""Outputs: what a run leaves behind and how it is read back.

`results` owns the results schema (Parquet, one row per input), reads results back one row per input
(latest row wins) and builds the mergeable summary; `rows` is THE row builder from a scored result (bulk
inference and `evaluate` both call it); `report` formats the summary every command prints; `dicom_seg`
writes a DICOM SEG per DICOM input.
"""
