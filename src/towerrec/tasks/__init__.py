"""The task layer: the only code that reads a whole Hydra config. `train.py` and `serve.py` call these."""
