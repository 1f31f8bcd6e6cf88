"""Development helpers for the demo, the tests and the benchmarks.

Nothing here is shipped with the worker; it needs the ``dev`` extras (``onnx``, ``scikit-learn``,
``skl2onnx``). Models are built at run time and never committed.
"""
