"""Training: configuration, optimisation, EMA, checkpoints, distributed helpers, the loop."""
