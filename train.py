"""Train and evaluate a recommender: `python train.py [overrides]` (see conf/train.yaml and README)."""

import hydra
from omegaconf import DictConfig

from towerrec.pipeline import metric_value, train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
