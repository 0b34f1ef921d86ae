"""Model loading, evaluation data, measurement, and the compression operators."""
