"""The one training loop, its learning-rate schedules and checkpoints."""
