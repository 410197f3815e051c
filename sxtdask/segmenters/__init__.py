"""sxtdask.segmenters."""
