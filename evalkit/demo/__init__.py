"""The embedded default: the 8×8 handwritten-digits demo (data, small trained models, `evalkit demo`)."""
