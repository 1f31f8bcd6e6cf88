"""The throughput benchmark: streamscore beside a naive loop, the client's ceiling and onnxruntime alone.

`python -m bench` starts its own broker, produces each scenario's requests once, runs every
contender over them, and prints a table (`bench/results.json` gets the numbers).
"""
