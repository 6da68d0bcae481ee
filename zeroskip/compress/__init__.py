"""Compression: pruning, calibration and quantization of a float Model (DESIGN.md).

Imports numpy, model and reference only, never engine or formats: the dependency runs the other
way (the ONNX importer re-quantizes weights with ``compress.quantize``).
"""
