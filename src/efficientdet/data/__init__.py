"""Image input: decoding, conversion and validation."""
