"""The streamscore worker: consume V2 requests from Kafka, score them with ONNX, produce results."""
