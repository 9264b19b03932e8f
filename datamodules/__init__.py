"""LightningDataModules over bytes: one shared base, one subclass per modality."""

from .bytes import ByteDataModule
from .text import TextBytes

__all__ = ["ByteDataModule", "TextBytes"]
