"""InfoTok: an information-bottleneck-regularised shared visual tokenizer for unified models."""
