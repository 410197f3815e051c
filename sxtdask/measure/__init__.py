"""sxtdask.measure."""
