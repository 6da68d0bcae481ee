"""Compression: pruning, calibration, quantization and low-rank factorization of a float Model.

    model = zeroskip.import_onnx("model.onnx")
    pruned = zeroskip.prune(model, 0.9)                  # compress.pruning
    int8 = zeroskip.quantize(pruned, calibration=x)      # compress.quantization, compress.calibration
    thin = zeroskip.compress.low_rank(model, energy=0.9) # compress.lowrank

``weights`` holds the weight quantizer that the ONNX importer also uses; ``schedule`` the gradual
pruning schedule; ``masks`` the pruning selection on plain arrays, for a user's own training loop.
Everything here takes a Model and returns a new one (DESIGN.md, "The way data flows"); the input
model is never modified.
"""

from . import schedule
from .lowrank import low_rank
from .pruning import masks, prune

__all__ = ["low_rank", "masks", "prune", "schedule"]
