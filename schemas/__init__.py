"""The wire contract shared by the worker and the producer: V2 codec, JSON Schemas, header names."""
