"""The one table of architectures and their named sizes: sweeps, ``bytelab compare``, the benchmark
and the tests all look models up here. Adding an architecture is its model file in ``modules/`` and
one entry in ``ARCHITECTURES``, ``SIZES`` (with a ``test`` size) and, if it has options worth
testing, ``TEST_VARIANTS``: the contract tests then run on it (tests/test_models.py).

``S1``..``S6`` are the MEGABYTE paper's Table 14 sizes (layers, width, head dim 64/64/96/64/80/128);
``table2`` is each architecture's configuration in the paper's Table 2; ``bench`` and ``bench-tiny``
are the models of ``bytelab bench`` (and of its tests). The paper gives MEGABYTE's
global/local split only for Table 2 (and Table 13), so MEGABYTE's ``S*`` use the Table 14 size for
the global model and a local model of half its layers at a quarter of its width: that split is
bytelab's choice, not the paper's. ``cpu-*`` sizes are for laptops and tests: at 256-byte windows
(64 or 128 PerceiverAR latents) they cost about 1.1-1.4 (xs), 3.0-3.7 (s) and 5.2-7.5 (m) MFLOPs per
training byte.

Options that depend on the study rather than the size (``max_seq_len``, ``num_latents``,
``patch_size`` of a CPU run) come from the sweep file. ``test`` sizes are the tiny models the test
suite checks every architecture on (with ``max_seq_len`` from the test).
"""

from __future__ import annotations

from typing import Any

ARCHITECTURES = {  # sweep name -> model class
    "decoder": "modules.Decoder",
    "megabyte": "modules.Megabyte",
    "perceiver_ar": "modules.PerceiverAR",
}

# Table 14: (layers, width, heads).
PAPER = {
    "S1": (12, 768, 12),
    "S2": (24, 1024, 16),
    "S3": (24, 1536, 16),
    "S4": (24, 2048, 32),
    "S5": (32, 2560, 32),
    "S6": (32, 4096, 32),
}


def _flat(layers: int, width: int, heads: int) -> dict[str, int]:
    return {"d_model": width, "n_layers": layers, "n_heads": heads}


def _megabyte(layers: int, width: int, heads: int, patch_size: int = 8) -> dict[str, int]:
    return {
        "patch_size": patch_size,
        "global_d_model": width,
        "global_layers": layers,
        "local_d_model": width // 4,
        "local_layers": max(layers // 2, 1),
        "n_heads": heads,
        "local_n_heads": max(heads // 4, 1),
    }


def _cpu_megabyte(global_layers: int, global_width: int, local_width: int) -> dict[str, int]:
    # P=4: at 256-byte windows P=8 leaves the global model only 32 positions (SpaceByte also found
    # P=4 often better than P=8).
    return {
        "patch_size": 4,
        "global_d_model": global_width,
        "global_layers": global_layers,
        "local_d_model": local_width,
        "local_layers": 2,
        "n_heads": 4,
    }


SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "decoder": {
        "test": _flat(2, 32, 4),
        "cpu-xs": _flat(2, 64, 4),
        "cpu-s": _flat(3, 96, 4),
        "cpu-m": _flat(4, 128, 4),
        **{name: _flat(*shape) for name, shape in PAPER.items()},
        "table2": _flat(22, 1024, 16),  # Transformer 320M, context 1024
        "bench": _flat(5, 512, 8),  # MEGABYTE's bench size's non-embedding parameters (15.8M)
        "bench-tiny": _flat(1, 64, 2),
        "million": _flat(2, 512, 8),  # MEGABYTE's million size's global model (6.3M of its 6.7M)
    },
    "perceiver_ar": {
        "test": {**_flat(2, 32, 4), "num_latents": 24},
        "cpu-xs": _flat(2, 64, 4),
        "cpu-s": _flat(3, 96, 4),
        "cpu-m": _flat(4, 128, 4),
        **{name: _flat(*shape) for name, shape in PAPER.items()},
        "table2": {**_flat(17, 1024, 16), "num_latents": 1024},  # 248M, context 8192
        # The bench decoder's five blocks: cross-attention + 4 latent blocks.
        "bench": {**_flat(4, 512, 8), "num_latents": 1024},
        "bench-tiny": {**_flat(1, 64, 2), "num_latents": 16},
        "million": {**_flat(1, 512, 8), "num_latents": 1024},  # cross-attention + 1 latent block
    },
    "megabyte": {
        "test": _cpu_megabyte(2, 64, 32),
        "cpu-xs": _cpu_megabyte(2, 128, 64),
        "cpu-s": _cpu_megabyte(2, 256, 64),
        "cpu-m": _cpu_megabyte(3, 256, 96),
        **{name: _megabyte(*shape) for name, shape in PAPER.items()},
        "table2": {  # 758M global (D=2048, L=14) + 262M local (D=1024, L=18), P=8, context 8192
            "patch_size": 8,
            "global_d_model": 2048,
            "global_layers": 14,
            "local_d_model": 1024,
            "local_layers": 18,
            "n_heads": 16,
            "local_n_heads": 16,
        },
        # 4 local blocks of width 256 cost what one block of width 512 does: the bench decoder's size.
        "bench": {
            "patch_size": 8,
            "global_d_model": 512,
            "global_layers": 4,
            "local_d_model": 256,
            "local_layers": 4,
            "n_heads": 8,
            "local_n_heads": 4,
        },
        "bench-tiny": {**_cpu_megabyte(1, 64, 32), "n_heads": 2},
        # `bytelab bench --preset million`: a 1,048,576-byte training step in minutes on 2 CPU cores.
        # P = 32 keeps the global model's attention (K = 32,768 patches at 1M) from dominating.
        "million": {
            "patch_size": 32,
            "global_d_model": 512,
            "global_layers": 2,
            "local_d_model": 128,
            "local_layers": 2,
            "n_heads": 8,
            "local_n_heads": 4,
        },
    },
}


# The options each architecture's contract tests also run on (names: architecture_variant): MEGABYTE's
# ablations of the paper's Table 10, and its output layer tied to the local byte embedding.
TEST_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "megabyte": {
        "cross_patch": {"cross_patch_attention": 2},
        "cnn": {"patch_encoder": "cnn"},
        "no_local": {"no_local": True},
        "no_global": {"no_global": True},
        "tied": {"tie_embeddings": True},
    },
}


def model_config(architecture: str, size: str, **options: Any) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a named size with ``options`` on top (``build_model`` builds it)."""
    init_args = model_init_args(architecture, size) | options
    return {"class_path": ARCHITECTURES[architecture], "init_args": init_args}


def model_init_args(architecture: str, size: str) -> dict[str, Any]:
    """The model constructor arguments of a named size (a copy), with one-line errors for unknown names."""
    if architecture not in SIZES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(SIZES)}")
    if size not in SIZES[architecture]:
        known = ", ".join(SIZES[architecture])
        raise ValueError(f"unknown size {size!r} for {architecture}; known: {known}")
    return dict(SIZES[architecture][size])
