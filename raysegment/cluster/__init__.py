"""Connecting to Ray and sizing work from what the cluster has (`plan`): train and inference plans are
checked before anything is submitted."""
