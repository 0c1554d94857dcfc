"""Base models: config, the packed transformer, attention contract, loading, tokenizer and GGUF import."""
