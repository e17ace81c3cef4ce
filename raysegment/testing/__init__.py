"""Test helpers that must be importable from Ray workers and test code alike: a local S3 endpoint (moto)
and a fault-injecting TCP proxy. Nothing here is used by the product at run time."""
