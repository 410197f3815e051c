"""sxtdask.io."""
