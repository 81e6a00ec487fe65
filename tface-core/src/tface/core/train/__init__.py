"""Training: optimiser setup, schedules, checkpoints and the run loop."""
