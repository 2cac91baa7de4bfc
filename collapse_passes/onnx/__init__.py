"""ONNX front end: load/save, key resolution, activation patterns and the graph passes."""

# onnx-graphsurgeon prints its warnings to stdout: a bfloat16 model gave two lines per constant read ("Could not
# convert: BFLOAT16 ...", "colored module is not installed ...": 339 lines before the CLI's one-line error, 1,300
# from the training loop's speed-up predictions). Ours say what matters; its errors still show.
from onnx_graphsurgeon.logger import G_LOGGER as _GS_LOGGER

if _GS_LOGGER.severity == _GS_LOGGER.INFO:   # its default; a level the user set is left alone
    _GS_LOGGER.severity = _GS_LOGGER.ERROR
