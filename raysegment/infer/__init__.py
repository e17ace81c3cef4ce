"""Inference: one image in memory (`predict`) or an archive on Ray Data (`pipeline`).

`predict` runs the model on preprocessed images; `postprocess` turns a probability map into a clean mask at
the original resolution with measurements and QC reasons; `pipeline` is bulk inference (read + decode
tasks, model actors, postprocess tasks, Parquet out, resumable); `results` owns the output schema and
reads results back, one row per input.
"""
