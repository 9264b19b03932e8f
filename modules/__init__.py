"""bytelab models: byte-level transformers on shared blocks, and the LightningModule."""

from .base import ByteModel
from .decoder import Decoder
from .hnet import HNet
from .hourglass import Hourglass
from .lm import ByteLM
from .megabyte import Megabyte
from .perceiver_ar import PerceiverAR
from .spacebyte import SpaceByte

__all__ = ["ByteLM", "ByteModel", "Decoder", "HNet", "Hourglass", "Megabyte", "PerceiverAR", "SpaceByte"]
