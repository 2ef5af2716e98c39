"""`python -m care_tf.train`: see care_tf/train/cli.py and docs/training.md."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from care_tf.train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
