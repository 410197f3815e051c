"""sxtdask.phantoms."""
