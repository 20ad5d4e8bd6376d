"""The one training loop shared by every task: precision, DDP, checkpoints, logging."""
