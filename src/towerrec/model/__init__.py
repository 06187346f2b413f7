"""The two-tower model: encoders, towers, the loss, the one encode path, building from config values, and the
LightningModule that trains and validates it."""
