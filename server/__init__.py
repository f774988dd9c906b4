"""The lil-sparse gRPC sidecar: proto conversion, engine thread, servicer, metrics and CLI.

The engine package ``lil_sparse`` never imports from here; this package imports the engine.
"""
