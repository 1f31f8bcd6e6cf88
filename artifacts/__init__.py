"""Model versions as files: where they are stored, their manifests, loading one into onnxruntime.

`storage` keeps immutable files (a version written whole or not at all), `manifest` describes a
version, `integrity` checks bytes against it (every file's sha256, a bounded gzip), `registry`
reads and adds versions (every file read once and checked), `runtime` loads a verified version
into onnxruntime from exactly those bytes and runs batches, `signature` checks a request against
a loaded model.
"""
