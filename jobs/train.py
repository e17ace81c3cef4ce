"""Training as a Ray job: the same code and flags as `raysegment train`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train.py --config configs/train-small.yaml --data s3://bucket/xrays --storage s3://bucket/runs

Inside a job, Ray sets RAY_ADDRESS, so training joins that cluster.
"""

import sys

from raysegment.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
