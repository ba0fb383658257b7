"""One LightningModule per post-training stage."""
