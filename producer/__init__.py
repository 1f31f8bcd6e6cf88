"""Publish feature batches to Kafka as Open Inference Protocol (V2) requests."""
