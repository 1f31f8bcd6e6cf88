"""Model versions as files: where they are stored, their manifests, loading one into onnxruntime.

`storage` keeps immutable files, `manifest` describes a version, `registry` reads and adds
versions (the sha256 of every load checked against the manifest), `runtime` loads a verified
version into onnxruntime and runs batches, `signature` checks a request against a loaded model.
"""
