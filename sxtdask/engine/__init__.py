"""sxtdask.engine."""
