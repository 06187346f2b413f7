"""Train and evaluate a recommender: `python train.py [overrides]` (see conf/train.yaml and README), the same as
`towerrec-train`. The job, and what a failing job does in a sweep or on bad input, is `towerrec.tasks.cli`.
"""

from pathlib import Path

from towerrec.tasks.cli import train_main

if __name__ == "__main__":
    train_main(Path(__file__).resolve().parent / "conf")
