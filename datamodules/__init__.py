"""LightningDataModules over bytes: one shared base, one subclass per modality."""

from .audio import AudioBytes
from .bytes import ByteDataModule
from .image import ImageBytes
from .text import TextBytes

__all__ = ["AudioBytes", "ByteDataModule", "ImageBytes", "TextBytes"]
