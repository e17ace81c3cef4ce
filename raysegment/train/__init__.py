"""Training on Ray Train: typed config, Ray Data ingest, the per-worker loop and the driver.

`config` parses YAML plus overrides into `TrainConfig`; `data` decodes and preprocesses pairs with Ray
Data (materialized, or above a budget through the Parquet training cache of `cache`) and augments per
epoch; `loop` is the data-parallel loop each worker runs (validation, checkpoints, LR schedule, early
stopping); `losses` the training losses; `curves` plots the training curves; `driver` plans the run
(waiting for capacity on a growing cluster), starts the `TorchTrainer` and writes the run directory.
"""
