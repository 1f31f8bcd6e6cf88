"""The wire contract every part shares: the V2 codec and tensors, errors, headers, records, topics, control states."""
