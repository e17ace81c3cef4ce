"""Inference: one image in memory (`predict`) or an archive on Ray Data (`pipeline`).

`predict` runs the model on preprocessed images; `postprocess` turns a probability map into a clean mask at
the original resolution with measurements and QC reasons (with their severity); `quality` is the
calibrated quality_score; `archive` and `dicom_seg` handle EXIF, inverted exports and DICOM SEG output;
`worklist` lists, resumes and summarizes an archive a partition at a time; `pipeline` is bulk inference
(read + decode tasks, model actors, postprocess tasks, Parquet out, resumable); `results` owns the output
schema, reads results back one row per input and builds the summary; `report` formats it.
"""
