"""The prepare step: raw image-text pairs (or the embedded synthetic set) to WebDataset shards."""
