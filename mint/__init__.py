"""MinT: train and serve very many LoRA policies over shared, resident base models."""

__version__ = "0.1.0"
