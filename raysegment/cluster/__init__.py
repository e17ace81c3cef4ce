"""Connecting to Ray and sizing work from what the cluster has (`plan`: train and inference plans are
checked before anything is submitted), and waiting, visibly and for a bounded time, for an autoscaling
cluster to grow (`capacity`)."""
