"""repsr_ext: RepSR super-resolution.

Train with re-parameterizable blocks and the modified BN (``RepSRNet``), merge every block into one
3x3 conv once (``RepSRNet.reparameterize() -> PlainSR``), save the deployed file
(``PlainSR.save``), and run it as one fused CPU/CUDA op (``FusedSR.load``).
"""
__version__ = "0.1.0"

from .blocks import BLOCKS, ModifiedBatchNorm2d, make_block  # noqa: E402
from .nets import PRESETS, PlainSR, RepSRNet  # noqa: E402
from .fused import FusedSR  # noqa: E402

__all__ = ["BLOCKS", "PRESETS", "FusedSR", "ModifiedBatchNorm2d", "PlainSR", "RepSRNet", "make_block"]
