"""Analytic forward FLOP counts, one function per architecture.

Convention (DESIGN.md): 2 FLOPs per multiply-accumulate in every matmul of the forward pass,
attention's score (QK^T) and value (AV) products included at full size (no causal halving, as
``torch.utils.flop_counter.FlopCounterMode`` counts them); embeddings, norms and activations cost
0; the output head counts. Training FLOPs are 3x forward. Tests check every function against
``FlopCounterMode`` on the real modules.

``skip_masked=True`` gives instead what a causal kernel executes: SDPA with ``is_causal`` (every
self-attention here) computes only the query-key pairs on and below the diagonal, about half of a
long window's attention. The benchmark divides time into these FLOPs to measure how well the
hardware is used; compute matching keeps the convention above. Cross-attention with an explicit
mask (PerceiverAR's, on the CPU) computes every pair and stays at full size.
"""

from __future__ import annotations

from .base import VOCAB_SIZE


def linear_flops(tokens: int, d_in: int, d_out: int) -> int:
    """A bias-free ``nn.Linear`` applied to ``tokens`` vectors."""
    return 2 * tokens * d_in * d_out


def attention_flops(q_len: int, kv_len: int, d_model: int, skip_masked: bool = False) -> int:
    """Score and value products of one attention layer (all heads): 2 matmuls of q_len x kv_len x d;
    with ``skip_masked``, only the pairs a bottom-right causal mask keeps (query i sees keys up to
    ``kv_len - q_len + i``)."""
    pairs = q_len * (kv_len - q_len) + q_len * (q_len + 1) // 2 if skip_masked else q_len * kv_len
    return 2 * 2 * pairs * d_model


def window_attention_flops(seq_len: int, window: int, d_model: int, skip_masked: bool = False) -> int:
    """Causal self-attention over a sliding ``window`` (``layers.sliding_window_attention``): a window
    that covers the sequence is plain causal attention; up to ``2 * window`` positions every query
    computes all ``seq_len`` keys under an explicit band mask; longer, each block of ``window``
    queries computes ``2 * window`` keys under it (masks are executed in full)."""
    if seq_len <= window:
        return attention_flops(seq_len, seq_len, d_model, skip_masked)
    if seq_len <= 2 * window:
        return attention_flops(seq_len, seq_len, d_model)
    padded = -(-seq_len // window) * window
    return attention_flops(padded, 2 * window, d_model)


def block_flops(
    q_len: int, kv_len: int, d_model: int, skip_masked: bool = False, window: int | None = None
) -> int:
    """One pre-norm block: q, kv and output projections, attention (over a sliding ``window`` of
    self-attention, if given), and the 4x MLP."""
    projections = linear_flops(q_len, d_model, d_model) * 2 + linear_flops(kv_len, d_model, 2 * d_model)
    mlp = 2 * linear_flops(q_len, d_model, 4 * d_model)
    if window is None:
        attention = attention_flops(q_len, kv_len, d_model, skip_masked)
    else:
        attention = window_attention_flops(q_len, window, d_model, skip_masked)
    return projections + attention + mlp


def stack_flops(
    seq_len: int, d_model: int, n_layers: int, skip_masked: bool = False, window: int | None = None
) -> int:
    """A causal self-attention stack over one sequence of ``seq_len`` positions."""
    return n_layers * block_flops(seq_len, seq_len, d_model, skip_masked, window)


def head_flops(tokens: int, d_model: int) -> int:
    """The output projection to 256 byte logits."""
    return linear_flops(tokens, d_model, VOCAB_SIZE)


def decoder_flops(
    seq_len: int, d_model: int, n_layers: int, skip_masked: bool = False, window: int | None = None
) -> int:
    """Flat decoder: every position through every layer (attending over a sliding ``window``, if
    given), every position scored. Rotary positions are elementwise: they cost nothing here."""
    return stack_flops(seq_len, d_model, n_layers, skip_masked, window) + head_flops(seq_len, d_model)


def megabyte_flops(
    seq_len: int,
    patch_size: int,
    global_d_model: int,
    global_layers: int,
    local_d_model: int,
    local_layers: int,
    cross_patch_attention: int = 0,
    conv_kernels: tuple[int, ...] = (),
    no_local: bool = False,
    no_global: bool = False,
    skip_masked: bool = False,
) -> int:
    """MEGABYTE: a global stack over K = T/P patches of width P*D_G, the shared D_G -> D_L
    projection, a local stack over each patch of P bytes, and the head on every byte.

    A window whose length is not a multiple of P is padded on the right to one (causal, so the
    scored bytes are unaffected): the padded length is what the hardware computes. The ablations:
    ``conv_kernels`` adds causal D_G -> D_G convolutions over every byte; cross-patch attention gives
    every local layer r more keys per patch (computed under an explicit mask, so executed in full)
    and runs the r pads through all but the last local layer once per window; ``no_local`` drops the
    projection and local stack (the head reads D_G chunks); ``no_global`` drops the global stack and
    the projection.
    """
    num_patches = -(-seq_len // patch_size)
    padded = num_patches * patch_size
    d_byte = global_d_model // patch_size
    total = 0
    if not no_global:
        total += stack_flops(num_patches, global_d_model, global_layers, skip_masked)
        total += sum(2 * padded * d_byte * d_byte * k for k in conv_kernels)
    if no_local:
        return total + head_flops(padded, d_byte)
    if not no_global:
        total += linear_flops(padded, d_byte, local_d_model)
    r = cross_patch_attention
    if r:  # each layer: P queries over r + P keys (a mask, not is_causal), and the pads' own layers
        total += num_patches * local_layers * block_flops(patch_size, r + patch_size, local_d_model)
        total += (local_layers - 1) * block_flops(r, r, local_d_model, skip_masked)
    else:
        total += num_patches * stack_flops(patch_size, local_d_model, local_layers, skip_masked)
    return total + head_flops(padded, local_d_model)


def perceiver_ar_flops(
    seq_len: int, d_model: int, n_layers: int, num_latents: int, skip_masked: bool = False
) -> int:
    """PerceiverAR: one cross-attention block from the last N positions into all T inputs, then
    ``n_layers`` self-attention blocks over the N latents; only the N latents are scored."""
    latents = min(seq_len, num_latents)
    cross = block_flops(latents, seq_len, d_model, skip_masked and latents == seq_len)  # is_causal only then
    return cross + stack_flops(latents, d_model, n_layers, skip_masked) + head_flops(latents, d_model)


def hourglass_flops(
    seq_len: int,
    d_model: int,
    byte_layers: int,
    levels: list[tuple[int, int]],
    linear_pooling: bool = True,
    linear_upsampling: bool = True,
    skip_masked: bool = False,
) -> int:
    """Hourglass: byte layers on each side of the shortened levels, the head on every byte. Level i,
    of factor k_i and a_i layers, runs over n_i = ceil(n_{i-1} / k_i) positions (no padding: its last
    group ends at a real position); a level with a deeper one inside has a_i layers on each side. A
    linear pooling maps k_i * D -> D per shortened position, a linear upsampling D -> k_i * D;
    average pooling and repeat upsampling cost no matmul."""
    total = 2 * stack_flops(seq_len, d_model, byte_layers, skip_masked) + head_flops(seq_len, d_model)
    length = seq_len
    for i, (factor, n_layers) in enumerate(levels):
        length = -(-length // factor)
        sides = 1 if i == len(levels) - 1 else 2
        total += sides * stack_flops(length, d_model, n_layers, skip_masked)
        if linear_pooling:
            total += linear_flops(length, factor * d_model, d_model)
        if linear_upsampling:
            total += linear_flops(length, d_model, factor * d_model)
    return total


def hnet_flops(
    seq_len: int,
    chunks: int,
    d_model: int,
    d_main: int,
    encoder_layers: int,
    main_layers: int,
    decoder_layers: int,
    skip_masked: bool = False,
) -> int:
    """H-Net (one stage) on one window of ``seq_len`` bytes that formed ``chunks`` chunks: the encoder
    stack over every byte, the routing module's W_q and W_k and the residual's W_res (three D x D
    projections per byte), the main stack over the chunks only, the decoder stack and the head over
    every byte. Smoothing, the straight-through estimator and the gathers are elementwise: 0 FLOPs."""
    return (
        stack_flops(seq_len, d_model, encoder_layers, skip_masked)
        + 3 * linear_flops(seq_len, d_model, d_model)
        + stack_flops(chunks, d_main, main_layers, skip_masked)
        + decoder_flops(seq_len, d_model, decoder_layers, skip_masked)
    )


def spacebyte_flops(
    seq_len: int,
    num_slots: int,
    local_d_model: int,
    local_layers: int,
    global_d_model: int,
    global_layers: int,
    window: int,
    skip_masked: bool = False,
) -> int:
    """SpaceByte: ``local_layers`` sliding-window blocks over every byte, ``global_layers`` causal
    blocks over ``num_slots`` global positions, the head on every byte. Moving a byte's vector in
    and out of the global width (zeros in front, the last d dims back) costs no matmul."""
    local = stack_flops(seq_len, local_d_model, local_layers, skip_masked, window)
    global_ = stack_flops(num_slots, global_d_model, global_layers, skip_masked)
    return local + global_ + head_flops(seq_len, local_d_model)
