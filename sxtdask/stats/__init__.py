"""sxtdask.stats."""
