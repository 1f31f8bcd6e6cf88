"""The `streamscore` command line: one entry point for the worker, the clients and the lifecycle."""
