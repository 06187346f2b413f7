"""Helpers every layer may use: plain-value conversion and JSON files (`io`), Hydra glue for tasks (`hydra`)."""
