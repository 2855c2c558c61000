"""alfred-edge: fit, train, quantize and benchmark ALFRED's seq2seq models for edge boards."""

__version__ = "0.1.0"
