"""Generation: KV-cached temporal decoding with parallel spatial unmasking."""
