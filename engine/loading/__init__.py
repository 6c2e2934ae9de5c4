"""Checkpoints in and out: reading, validating and streaming Hugging Face safetensors shards,
writing them, random weights, presets and the tokenizer."""
