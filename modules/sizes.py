"""The one table of architectures and their named sizes: sweeps, ``bytelab compare``, the benchmark
and the tests all look models up here. Adding an architecture is its model file in ``modules/`` and
one entry in ``ARCHITECTURES``, ``SIZES`` (with a ``test`` size) and, if it has options worth
testing, ``TEST_VARIANTS``: the contract tests then run on it (tests/test_models.py).

``S1``..``S6`` are the MEGABYTE paper's Table 14 sizes (layers, width, head dim 64/64/96/64/80/128);
``table2`` is each architecture's configuration in the paper's Table 2; sizes named by the paper's
count (``62M``, ``125M+125M``, ...) are its Table 15 models and those of Tables 9-13 (the paper-scale
studies use them, and ``paper_counts`` counts parameters as the paper does); ``bench`` and ``bench-tiny``
are the models of ``bytelab bench`` (and of its tests). The paper gives MEGABYTE's
global/local split only for Table 2 (and Table 13), so MEGABYTE's ``S*`` use the Table 14 size for
the global model and a local model of half its layers at a quarter of its width: that split is
bytelab's choice, not the paper's. ``cpu-*`` sizes are for laptops and tests: at 256-byte windows
(64 or 128 PerceiverAR latents) they cost about 1.1-1.4 (xs), 3.0-3.7 (s) and 5.2-7.5 (m) MFLOPs per
training byte; ``cpu-xxs``, the scaling study's small size, costs 3-3.7x less than ``cpu-xs`` at
128-byte windows (0.19-0.55 MFLOPs per byte), so that its compute-optimal size can move within 16x.

Options that depend on the study rather than the size (``max_seq_len``, ``num_latents``,
``patch_size`` of a CPU run) come from the sweep file. ``test`` sizes are the tiny models the test
suite checks every architecture on (with ``max_seq_len`` from the test).
"""

from __future__ import annotations

from typing import Any

ARCHITECTURES = {  # sweep name -> model class
    "decoder": "modules.Decoder",
    "decoder_windowed": "modules.Decoder",  # sliding-window attention and rotary positions
    "megabyte": "modules.Megabyte",
    "perceiver_ar": "modules.PerceiverAR",
    "hourglass": "modules.Hourglass",
    "hnet": "modules.HNet",
    "spacebyte": "modules.SpaceByte",
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


def _windowed(layers: int, width: int, heads: int, window: int) -> dict[str, Any]:
    """The strongest flat baseline (SpaceByte's "window attention" Transformer): the decoder's shape
    attending over a sliding ``window``, with rotary positions, so that ``max_seq_len`` (the training
    window) does not bound evaluation (``Decoder.max_input_len``)."""
    return {**_flat(layers, width, heads), "window": window, "positions": "rope"}


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


def _split(
    patch_size: int, global_shape: tuple[int, int, int], local_shape: tuple[int, int, int]
) -> dict[str, int]:
    """A MEGABYTE of the paper's Table 15: global and local (layers, width, heads)."""
    (global_layers, global_width, heads), (local_layers, local_width, local_heads) = global_shape, local_shape
    return {
        "patch_size": patch_size,
        "global_d_model": global_width,
        "global_layers": global_layers,
        "local_d_model": local_width,
        "local_layers": local_layers,
        "n_heads": heads,
        "local_n_heads": local_heads,
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


def _hourglass(width: int, hierarchy: str, heads: int = 4, **options: Any) -> dict[str, Any]:
    return {"d_model": width, "hierarchy": hierarchy, "n_heads": heads, **options}


def _hnet(
    d_model: int, d_main: int, outer_layers: int, main_layers: int, n_heads: int = 4, main_n_heads: int = 4
) -> dict[str, int]:
    # Encoder and decoder alike (the paper's m4 ... m4); the target ratio stays the paper's N = 6.
    return {
        "d_model": d_model,
        "d_main": d_main,
        "encoder_layers": outer_layers,
        "main_layers": main_layers,
        "decoder_layers": outer_layers,
        "n_heads": n_heads,
        "main_n_heads": main_n_heads,
    }


def _spacebyte(local_width: int, layers: int, heads: int, window: int | None = None) -> dict[str, int]:
    """The paper's defaults: global width D = 2d, as many local blocks (split evenly around the global
    ones) as global blocks, local attention window W = d."""
    return {
        "local_d_model": local_width,
        "local_layers": layers,
        "global_d_model": 2 * local_width,
        "global_layers": layers,
        "attention_window": window or local_width,
        "n_heads": heads,
    }


SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "decoder": {
        "test": _flat(2, 32, 4),
        "cpu-xxs": _flat(2, 32, 2),
        "cpu-xs": _flat(2, 64, 4),
        "cpu-s": _flat(3, 96, 4),
        "cpu-m": _flat(4, 128, 4),
        **{name: _flat(*shape) for name, shape in PAPER.items()},
        "table2": _flat(22, 1024, 16),  # Transformer 320M, context 1024
        # Table 15: Image256 / Image640 / audio Transformers (Image64's 760M is S3, Table 9's 350M S2).
        "62M": _flat(6, 768, 12),
        "83M": _flat(8, 768, 12),
        "135M": _flat(13, 768, 12),
        "bench": _flat(5, 512, 8),  # MEGABYTE's bench size's non-embedding parameters (15.8M)
        "bench-tiny": _flat(1, 64, 2),
        "million": _flat(2, 512, 8),  # MEGABYTE's million size's global model (6.3M of its 6.7M)
    },
    # The decoder's cpu-* shapes over 128-byte windows: issue 25 measured 128-byte training windows at
    # 2.61 bits per byte against 3.66 for 1024 (cpu-xs, 3e12 FLOPs). A 2-layer stack reads 255 bytes.
    "decoder_windowed": {
        "test": _windowed(2, 32, 4, 16),  # reads 31 bytes: the 96-byte test windows cross its edge
        "cpu-xxs": _windowed(2, 32, 2, 128),
        "cpu-xs": _windowed(2, 64, 4, 128),
        "cpu-s": _windowed(3, 96, 4, 128),
        "cpu-m": _windowed(4, 128, 4, 128),
        "bench-tiny": _windowed(1, 64, 2, 64),
    },
    "perceiver_ar": {
        "test": {**_flat(2, 32, 4), "num_latents": 24},
        "cpu-xxs": _flat(2, 32, 2),
        "cpu-xs": _flat(2, 64, 4),
        "cpu-s": _flat(3, 96, 4),
        "cpu-m": _flat(4, 128, 4),
        **{name: _flat(*shape) for name, shape in PAPER.items()},
        # The paper's L counts the cross-attention layer: L=17 is 1 cross-attention + 16 latent blocks.
        "table2": {**_flat(16, 1024, 16), "num_latents": 1024},  # 248M, context 8192
        # Table 15 (L = 1 cross-attention + n_layers): Image64's 227M (D=1024, L=16); the 62M (D=768,
        # L=6) of Image256, Image640 and audio. Latents come from the study (768 or 1024).
        "227M": {**_flat(15, 1024, 16), "num_latents": 1024},
        "62M": {**_flat(5, 768, 12), "num_latents": 1024},
        # The bench decoder's five blocks: cross-attention + 4 latent blocks.
        "bench": {**_flat(4, 512, 8), "num_latents": 1024},
        "bench-tiny": {**_flat(1, 64, 2), "num_latents": 16},
        "million": {**_flat(1, 512, 8), "num_latents": 1024},  # cross-attention + 1 latent block
    },
    "megabyte": {
        "test": _cpu_megabyte(2, 64, 32),
        "cpu-xxs": {**_cpu_megabyte(2, 64, 32), "n_heads": 2},
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
        # Table 15 and the paper's text, global + local (layers, width, heads). A global width is P * D_G,
        # so it must be a multiple of P: where the paper's is not, the nearest multiple is used (noted).
        # Image64, P=12: 1.3B + 1.3B (D=2048, L=24 each); 2016 = 12 x 168 (21 heads of 96) for 2048.
        "1.3B+1.3B": _split(12, (24, 2016, 21), (24, 2048, 32)),
        # Image256, P=192: 125M + 125M (D=768, L=12 each); Table 12's P=192 model too.
        "125M+125M": _split(192, (12, 768, 12), (12, 768, 12)),
        # Image640, P=192: 125M + 83M (D=768, L=12 and 8).
        "125M+83M": _split(192, (12, 768, 12), (8, 768, 12)),
        # Table 12, global 125M: local 114M (L=11) at P=48, 83M (L=8) at P=768.
        "125M+114M": _split(48, (12, 768, 12), (11, 768, 12)),
        "125M+83M-p768": _split(768, (12, 768, 12), (8, 768, 12)),
        # Audio, P=32: 350M (D=1024, L=24) + 125M (D=768, L=12).
        "350M+125M": _split(32, (24, 1024, 16), (12, 768, 12)),
        # PG-19 at 400B bytes (Tables 3, 11, 17), P=8: 1.3B + 350M (D=1024, L=24).
        "1.3B+350M": _split(8, (24, 2048, 32), (24, 1024, 16)),
        # Table 9 / Table 13, P=8: 1.3B + 218M (D=1024, L=15 reads 218M as GPT-3's 350M at 15 layers).
        "1.3B+218M": _split(8, (24, 2048, 32), (15, 1024, 16)),
        # Table 13, P=8: 350M + 290M (L=20) and 760M + 262M (L=18), local width 1024.
        "350M+290M": _split(8, (24, 1024, 16), (20, 1024, 16)),
        "760M+262M": _split(8, (24, 1536, 16), (18, 1024, 16)),
        # Table 10, arXiv, P=8: w/o cross-patch 921M (D=2048, L=17) + 350M; CNN encoder 704M (L=13) + 262M.
        "921M+350M": _split(8, (17, 2048, 16), (24, 1024, 16)),
        "704M+262M": _split(8, (13, 2048, 16), (18, 1024, 16)),
        # Table 10, arXiv w/o local: a global model alone (D=2560, L=20) at P=4; the local half is unused.
        "global-2560x20-p4": _split(4, (20, 2560, 32), (1, 64, 4)),
        # Table 10, Image256 w/o local: D=4096, L=32 at P=48; 4080 = 48 x 85 (34 heads of 120) for 4096.
        "global-4080x32-p48": _split(48, (32, 4080, 34), (1, 64, 4)),
        # Table 10, w/o global: a local model alone, 350M (D=1024, L=24) on arXiv (and audio, bytelab's
        # choice); the Image256 column's 125M local alone (bytelab's choice, the paper is silent).
        "local-350M-p8": _split(8, (1, 64, 4), (24, 1024, 16)),
        "local-350M-p32": _split(32, (1, 64, 4), (24, 1024, 16)),
        "local-125M-p192": _split(192, (1, 192, 4), (12, 768, 12)),
        # Table 10, Image256 w/o cross-patch: 250M global (read as D=768, L=24: GPT-3's 125M at 24 layers)
        # + 156M local (D=768, L=15).
        "250M+156M": _split(192, (24, 768, 12), (15, 768, 12)),
        # Table 10, audio w/o local (bytelab's choice, the paper is silent): 350M global at P=4.
        "global-1024x24-p4": _split(4, (24, 1024, 16), (1, 64, 4)),
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
    # cpu-*: within 6% of the decoder's same-named size in training FLOPs per byte at 1024-byte windows
    # (2.26, 5.36, 11.37 MFLOPs against 2.26, 5.68, 11.21). The paper's sizes use linear pooling and
    # upsampling, not its attention resampling (which bytelab does not implement): imagenet32 is its
    # smallest published model (d 512, 3@1 24@3 3@1: 96.1M non-embedding parameters here), enwik8 its
    # text model. bench: the bench decoder's five blocks of width 512, three over a 4x shorter sequence.
    "hourglass": {
        "test": _hourglass(32, "1@1 2@3 1@1"),
        "cpu-xxs": _hourglass(32, "1@1 2@3 1@1", heads=2),
        "cpu-xs": _hourglass(56, "1@1 2@3 1@1"),
        "cpu-s": _hourglass(96, "1@1 4@3 1@1"),
        "cpu-m": _hourglass(128, "1@1 2@2 6@6 2@2 1@1"),
        "imagenet32": _hourglass(512, "3@1 24@3 3@1", heads=8),
        "enwik8": _hourglass(512, "5@1 24@3 5@1", heads=8, dropout=0.2),
        "bench": _hourglass(512, "1@1 3@4 1@1", heads=8),
        "bench-tiny": _hourglass(64, "1@1 1@2 1@1", heads=2),
    },
    # At 1024-byte windows and the target 1/6 chunks per byte, cpu-* cost the decoder's same-named
    # size's training FLOPs per byte within 4% (2.35 / 5.84 / 11.19 against 2.26 / 5.68 / 11.21 M).
    "hnet": {
        "test": _hnet(32, 64, 1, 2),
        "cpu-xxs": _hnet(24, 64, 1, 3, n_heads=2, main_n_heads=2),
        "cpu-xs": _hnet(48, 128, 1, 3),
        "cpu-s": _hnet(64, 256, 1, 4),
        "cpu-m": _hnet(96, 256, 2, 4),
        # The paper's smallest published model, one-stage H-Net "L" ([m4, [T22], m4], D 1024/1536,
        # compute-matched to GPT-3 Large), with Transformer blocks in place of its Mamba-2 layers.
        "1stage-L": _hnet(1024, 1536, 4, 22, n_heads=16, main_n_heads=16),
        "bench": _hnet(256, 512, 1, 4, main_n_heads=8),
        "bench-tiny": _hnet(32, 64, 1, 1, n_heads=2, main_n_heads=2),
    },
    # SpaceByte's cpu-* cost (at 1024-byte windows, the expected T/6 global positions) within 15% of the
    # decoder's same-named size: 2.08 / 2.26 (xs), 5.75 / 5.68 (s), 9.99 / 11.21 (m) training MFLOPs per byte
    # (tests/test_spacebyte.py). ``table3`` is the paper's Table 3 model (PG-19, arXiv), ``table3-github``
    # its smallest published one (GitHub: 12 + 12 blocks, T = 8192 = 8 T_G).
    "spacebyte": {
        "test": {**_spacebyte(32, 2, 4, window=16), "patch_size": 6},
        "cpu-xxs": _spacebyte(40, 2, 2),
        "cpu-xs": _spacebyte(80, 2, 4),
        "cpu-s": _spacebyte(96, 4, 4),
        "cpu-m": _spacebyte(128, 4, 4),
        "table3": {**_spacebyte(512, 16, 16), "local_n_heads": 8, "max_seq_len": 6144},  # 201M + 50M
        "table3-github": {
            **_spacebyte(512, 12, 16),
            "local_n_heads": 8,
            "max_seq_len": 8192,
            "patch_size": 8,
        },
        # The bench decoder's non-embedding parameters: 3 global blocks of 512 + 8 local blocks of 256.
        "bench": {**_spacebyte(256, 8, 8), "global_layers": 3, "local_n_heads": 4},
        "bench-tiny": {**_spacebyte(32, 2, 2, window=16), "global_layers": 1},
    },
}


# The options each architecture's contract tests also run on (names: architecture_variant): the decoder's
# two position schemes with and without a window; MEGABYTE's
# ablations of the paper's Table 10, and its output layer tied to the local byte embedding; Hourglass's
# nested levels and its other pooling and upsampling.
TEST_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "decoder": {"rope": {"positions": "rope"}},  # full attention, rotary positions
    "decoder_windowed": {"learned": {"positions": "learned"}},  # the window over learned positions
    "megabyte": {
        "cross_patch": {"cross_patch_attention": 2},
        "cnn": {"patch_encoder": "cnn"},
        "no_local": {"no_local": True},
        "no_global": {"no_global": True},
        "tied": {"tie_embeddings": True},
    },
    "hourglass": {  # two nested levels (factors 2 then 3), and the parameter-free resampling
        "nested": {"hierarchy": "1@1 1@2 1@6 1@2 1@1"},
        "average_repeat": {"pooling": "average", "upsampling": "repeat"},
    },
    # SpaceByte's "fixed P" rule: a global position every P bytes, for images and audio.
    "spacebyte": {"periodic": {"boundary": "periodic", "patch_size": 4}},
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


# How the MEGABYTE paper counts parameters: it names its models as GPT-3 does (Brown et al. 2020, Table
# 2.1), a model of width D and L layers being GPT-3's model of width D scaled to L layers (Table 2's
# "320M (D=1024, L=22)" is 22/24 of GPT-3's 350M, "62M (D=768, L=6)" half of its 125M). GPT-3's counts
# include its 50,257-token and 2,048-position embedding tables (52,305 x D), which a byte model does
# not have; for the narrow models that is a third of the name. So a stack of L blocks of width D is
# counted here as its blocks' parameters + L / L_GPT3(D) x 52,305 x D.
GPT3_LAYERS = {768: 12, 1024: 24, 1536: 24, 2048: 24, 2560: 32, 4096: 32}  # width -> GPT-3's layers
GPT3_EMBEDDING_ROWS = 50257 + 2048


def paper_count(blocks: Any, width: int) -> float:
    """A transformer stack's size as the MEGABYTE paper names it (see ``GPT3_LAYERS``): its blocks'
    parameters plus their share of GPT-3's embedding tables at the nearest GPT-3 width."""
    blocks = list(blocks)
    nearest = min(GPT3_LAYERS, key=lambda w: abs(w - width))
    own = sum(p.numel() for block in blocks for p in block.parameters())
    return own + len(blocks) / GPT3_LAYERS[nearest] * GPT3_EMBEDDING_ROWS * width


def paper_counts(model: Any) -> list[float]:
    """The sizes the paper gives a model: ``[flat]`` for a Decoder or PerceiverAR (whose L counts
    its cross-attention layer), ``[global, local]`` for a MEGABYTE, ``[global]`` without its local
    model, ``[local]`` without its global model."""
    name = type(model).__name__
    if name == "Decoder":
        return [paper_count(model.transformer.blocks, model.d_model)]
    if name == "PerceiverAR":
        return [paper_count([model.cross_attention, *model.latent_model.blocks], model.d_model)]
    if name == "Megabyte":
        counts = []
        if not model.no_global:
            counts.append(paper_count(model.global_model.blocks, model.global_d_model))
        if not model.no_local:
            counts.append(paper_count(model.local_model.blocks, model.local_d_model))
        return counts
    raise ValueError(f"no paper count for {name}")
