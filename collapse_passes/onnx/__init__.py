"""ONNX front end: load/save, key resolution, activation patterns and the graph passes."""
