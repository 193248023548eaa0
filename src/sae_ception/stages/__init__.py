"""The pipeline's stages, one module each: baseline -> SAE -> evaluate -> auxiliary retraining, composed by `cycle`."""
