"""Bulk inference as a Ray job: the same code and flags as `raysegment infer`:

    ray job submit --working-dir . -- python jobs/infer.py --input s3://bucket/cxr/ \
        --checkpoint s3://bucket/runs/r1/best --output s3://bucket/masks/r1

Inside a job, Ray sets RAY_ADDRESS, so inference joins that cluster.
"""

import sys

from raysegment.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
