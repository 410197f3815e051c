"""sxtdask.relabel."""
