"""Scaling techniques applied to a built model, in torchtitan's order: activation checkpointing, then
``torch.compile``, then FSDP2 ``fully_shard`` per transformer block, then on the whole model."""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from .layers import Block

# The torch.compile backend of ``compile=True``: inductor (generated kernels) unless the environment
# names another. The tests name ``aot_eager`` (TorchDynamo's graph capture and AOTAutograd's joint
# forward/backward graph, run by eager kernels) to exercise the compiled path on every model without
# a C++ build per model.
COMPILE_BACKEND_ENV = "BYTELAB_COMPILE_BACKEND"


def parallelize(
    model: nn.Module,
    mesh: DeviceMesh | None,
    activation_checkpointing: bool = False,
    compile: bool = False,
    bf16: bool = False,
) -> None:
    """Wrap and shard ``model`` in place.

    Every transformer block (global and local blocks for MEGABYTE) is wrapped, then sharded with
    ``fully_shard`` when a ``mesh`` is given (Lightning's ``ModelParallelStrategy`` provides it as the
    LightningModule's ``device_mesh``), then the whole model. bytelab uses no tensor parallelism: the
    mesh's two dimensions (Lightning names them data_parallel x tensor_parallel; by default nodes x
    GPUs per node) are replicate x shard, i.e. HSDP: weights sharded within a node, replicated across
    nodes. A 1 x world mesh is plain FSDP. With ``bf16`` the shards hold bf16 parameters and gradients
    are reduced in float32.
    """
    blocks = parallelize_blocks(model, activation_checkpointing, compile)
    if mesh is None:
        return
    policy = MixedPrecisionPolicy()
    if bf16:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def parallelize_blocks(model: nn.Module, activation_checkpointing: bool, compile: bool) -> list[nn.Module]:
    """Wrap every transformer block of ``model`` in place (checkpointing, then compile) and return them."""
    blocks = []
    for name, block in list(model.named_modules()):
        if not isinstance(block, Block):
            continue
        if activation_checkpointing:
            block = checkpoint_wrapper(block)
        if compile:
            block.compile(backend=os.environ.get(COMPILE_BACKEND_ENV, "inductor"))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, block)
        blocks.append(block)
    return blocks
