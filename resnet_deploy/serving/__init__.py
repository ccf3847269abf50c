"""Serving on Triton Inference Server: a model repository from a build's output, and a real server to check it.

`repository.py` writes (and reads back) the repository, with one entry per engine kind in `kinds.py`;
`python_model.py` is the model.py of the Python-backend variant; `server.py` runs a tritonserver process;
`load.py` sends requests at a given concurrency and reads Triton's statistics; `check.py` is serve-check.
This package reads a build's files (report.json, the engine files and their sidecars), never the pipeline.
"""
