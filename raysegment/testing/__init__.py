"""Test helpers that must be importable from Ray workers and test code alike: a fault-injecting TCP proxy
and a loopback multi-node Ray cluster. Nothing here is used by the product at run time."""
