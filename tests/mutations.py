"""Deliberately wrong versions of bytelab, and the tests that must catch each one.

Each mutation is one exact text replacement in one source file: the kind of bug that silently
poisons a comparison table while the code still runs. ``tests/test_mutations.py`` applies each to a
copy of the tree and runs the tests named here, which must fail there (and pass on the real tree,
as the rest of the suite checks). A mutation whose text no longer occurs exactly once fails too, so
the list cannot go stale unnoticed: update it with the code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` by ``new`` in ``path``; every test in ``caught_by`` must then fail.

    ``caught_by`` holds pytest node ids without parameters (``file::test``); ``select`` narrows the
    run to some parameters (a ``-k`` expression) to keep it short. Every mutation runs under
    ``pytest -m mutations`` (a pytest process each, 5-35 s), not in the default ``pytest``.
    """

    why: str
    path: str
    old: str
    new: str
    caught_by: tuple[str, ...]
    select: str = ""


MUTATIONS = {
    # 1. Rows of a batch may see each other.
    "perceiver_ar_latents_mix_rows": Mutation(
        why="PerceiverAR's latents attend to a mix of their row and the neighbouring row",
        path="modules/perceiver_ar.py",
        old="num_latents or self.num_latents) :], context=h)",
        new="num_latents or self.num_latents) :], context=(h + h.roll(1, 0)) / 2)",
        caught_by=("tests/test_models.py::test_rows_of_a_batch_never_see_each_other",),
        select="perceiver_ar",
    ),
    # 2. The previous byte may be ignored.
    "flat_models_skip_the_previous_byte": Mutation(
        why="the decoder and PerceiverAR predict x_t from x_{<t-1}: their input is shifted right by two",
        path="modules/layers.py",
        old="shift_right(self.byte_embed(x), self.start) + self.pos_embed",
        new="shift_right(shift_right(self.byte_embed(x), self.start), self.start) + self.pos_embed",
        caught_by=(
            "tests/test_models.py::test_every_prediction_uses_the_byte_just_before_it",
            "tests/test_models.py::test_training_learns_the_context_of_known_data",
        ),
        select="decoder or perceiver_ar",
    ),
    "megabyte_local_skips_the_previous_byte": Mutation(
        why="MEGABYTE's local model sees the bytes of its patch shifted right by two",
        path="modules/megabyte.py",
        old="shift_right(self.local_byte_embed(patches), self.local_pad)",
        new="shift_right(shift_right(self.local_byte_embed(patches), self.local_pad), self.local_pad)",
        caught_by=("tests/test_models.py::test_every_prediction_uses_the_byte_just_before_it",),
        select="megabyte",
    ),
    # 3. FLOP formulas a few percent off.
    "flops_without_the_global_to_local_projection": Mutation(
        why="MEGABYTE's FLOP count leaves out the D_G -> D_L projection of Eq. 4",
        path="modules/flops.py",
        old="total += linear_flops(padded, d_byte, local_d_model)",
        new="total += 0",
        caught_by=("tests/test_models.py::test_flops_match_the_counter",),
        select="megabyte",
    ),
    "flops_without_local_attention": Mutation(
        why="MEGABYTE's FLOP count leaves out the local model's attention products",
        path="modules/flops.py",
        old="total += num_patches * stack_flops(patch_size, local_d_model, local_layers, skip_masked)",
        new="total += num_patches * local_layers * (block_flops(patch_size, patch_size, local_d_model, "
        "skip_masked) - attention_flops(patch_size, patch_size, local_d_model, skip_masked))",
        caught_by=("tests/test_models.py::test_flops_match_the_counter",),
        select="megabyte",
    ),
    "flops_head_on_the_unpadded_length": Mutation(
        why="MEGABYTE's head is counted on the window's bytes, not the padded length it computes",
        path="modules/flops.py",
        old="return total + head_flops(padded, local_d_model)",
        new="return total + head_flops(seq_len, local_d_model)",
        caught_by=("tests/test_models.py::test_flops_match_the_counter",),
        select="megabyte",
    ),
    "flops_per_byte_over_the_window": Mutation(
        why="FLOPs per byte divide by the window's length, not by the bytes the model scores",
        path="modules/base.py",
        old="return self.forward_flops(seq_len) / self.scored_len(seq_len)",
        new="return self.forward_flops(seq_len) / seq_len",
        caught_by=("tests/test_models.py::test_flops_match_the_counter",),
        select="perceiver_ar",
    ),
    # 4. Scoring errors that keep the number of bytes scored.
    "score_one_byte_early": Mutation(
        why="a sliding window scores the byte before its range and skips its own first byte",
        path="modules/lm.py",
        old="return nats, torch.arange(scored, device=x.device) >= scored - num_scored[:, None]",
        new="return nats, torch.arange(scored, device=x.device).roll(1) >= scored - num_scored[:, None]",
        caught_by=(
            "tests/test_evaluation.py::test_every_byte_of_the_split_is_scored_once",
            "tests/test_models.py::test_score_adds_the_known_losses_of_the_requested_bytes",
        ),
        select="decoder",
    ),
    "padding_batches_score_a_window": Mutation(
        why="a rank's padding batch scores window 0 again, counted twice across ranks",
        path="datamodules/protocol.py",
        old="return mine + [[(0, 0)]] * (per_rank - len(mine))",
        new="return mine + [[0]] * (per_rank - len(mine))",
        caught_by=("tests/test_evaluation.py::test_every_byte_of_the_split_is_scored_once",),
        select="decoder",
    ),
    # 5. Distributed training that is not what one process would do.
    "ranks_draw_the_same_windows": Mutation(
        why="the training sampler gives rank r the windows of rank 0 instead of its own",
        path="datamodules/protocol.py",
        old="return ((first + j) * world_size + rank for j in range(skip, length))",
        new="return ((first + j) * world_size for j in range(skip, length))",
        caught_by=("tests/test_distributed.py::test_every_split_trains_each_step_on_the_same_windows",),
    ),
    "fsdp_shards_without_reducing_gradients": Mutation(
        why="FSDP shards over the size-1 mesh dimension: the two ranks never reduce their gradients",
        path="modules/parallel.py",
        old="    if mesh is None:\n        return\n",
        new='    if mesh is None:\n        return\n    mesh = mesh["data_parallel"]\n',
        caught_by=("tests/test_distributed.py::test_split_training_equals_one_process",),
        select="fsdp",
    ),
    "budget_ignores_the_world_size": Mutation(
        why="the FLOP budget's steps are computed as if one process trained",
        path="experiments/budget.py",
        old="window = 3 * pl_module.model.forward_flops(datamodule.seq_len)\n    return window * "
        "datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches",
        new="window = 3 * pl_module.model.forward_flops(datamodule.seq_len)\n    return window * "
        "datamodule.batch_size * trainer.accumulate_grad_batches",
        caught_by=("tests/test_distributed.py::test_budget_counts_every_process_and_micro_batch",),
        select="ddp",
    ),
    "bytes_seen_counts_one_rank": Mutation(
        why="the bytes a run has trained on count one rank's share only",
        path="modules/lm.py",
        old='seen = self.trainer.strategy.reduce(seen.clone(), reduce_op="sum")',
        new="seen = seen.clone()",
        caught_by=("tests/test_distributed.py::test_budget_counts_every_process_and_micro_batch",),
        select="ddp",
    ),
    # 6. Fits and thresholds a broken implementation also meets.
    "fit_rmse_not_averaged": Mutation(
        why="the fit's rmse is the root of the summed squared error, not of its mean",
        path="analysis/fits.py",
        old="math.sqrt(error / len(loss))",
        new="math.sqrt(error)",
        caught_by=("tests/test_analysis.py::test_fit_recovers_a_known_law",),
    ),
    "fit_stops_refining_early": Mutation(
        why="the golden-section search for L_inf stops after 3 steps: every parameter slightly off",
        path="analysis/fits.py",
        old="for _ in range(100):",
        new="for _ in range(3):",
        caught_by=(
            "tests/test_analysis.py::test_fit_recovers_a_known_law",
            "tests/test_analysis.py::test_fits_from_synthetic_run_directories",
        ),
    ),
    "learning_rate_a_thousand_times_too_small": Mutation(
        why="the optimiser barely moves: bits per byte stay at the uniform 8, 'below 8' passed",
        path="modules/lm.py",
        old="lr=hp.lr,",
        new="lr=hp.lr * 1e-3,",
        caught_by=("tests/test_cli.py::test_fit_each_model_through_the_cli",),
        select="decoder",
    ),
    # 7. A protocol that favours one architecture (issue 12).
    "training_windows_start_anywhere": Mutation(
        why="an image training window starts on any pixel, not a whole patch (MEGABYTE's patches then cut "
        "across pixel patches, and learned positions see another colour channel)",
        path="datamodules/protocol.py",
        old="    end = align * (1 + int(rng.integers(resolution * resolution * channels // align)))",
        new="    end = channels * (1 + int(rng.integers(resolution * resolution)))",
        caught_by=("tests/test_image.py::test_training_windows_start_and_end_on_whole_patches",),
    ),
    "perceiver_ar_latents_at_the_padded_end": Mutation(
        why="PerceiverAR trains a short window's latents at the end of its padding, as if every window "
        "were seq_len bytes: the positions evaluation scores at a document's start go untrained",
        path="modules/perceiver_ar.py",
        old="        first = (lengths - scored).clamp(min=0)",
        new="        first = (lengths * 0 + seq_len - scored).clamp(min=0)",
        caught_by=(
            "tests/test_models.py::test_right_padded_training_windows_predict_what_the_unpadded_windows_do",
        ),
        select="perceiver_ar",
    ),
    "long_contexts_skip_short_documents": Mutation(
        why="a window near a document's start is stretched to seq_len bytes, into the next document: "
        "what a model trains on then depends on its seq_len",
        path="datamodules/protocol.py",
        old="    return doc, max(0, end - seq_len), end",
        new="    return doc, max(0, end - seq_len), end if end >= seq_len else min(seq_len, end + seq_len)",
        caught_by=("tests/test_data.py::test_two_context_lengths_train_on_the_same_documents",),
    ),
    # 8. A sliding window one position off, or priced as full attention (issue 25).
    "window_sees_one_key_too_many": Mutation(
        why="the sliding-window mask lets each query see W + 1 keys (itself and the W before it)",
        path="modules/layers.py",
        old="(key[None] > query[:, None] - window)",
        new="(key[None] >= query[:, None] - window)",
        caught_by=(
            "tests/test_windowed.py::test_a_prediction_reads_exactly_its_receptive_field",
            "tests/test_windowed.py::test_bounded_caches_decode_as_the_full_forward",
        ),
    ),
    "decoder_flops_ignore_the_window": Mutation(
        why="the windowed decoder's FLOPs are counted as full attention over the whole window",
        path="modules/flops.py",
        old="stack_flops(seq_len, d_model, n_layers, skip_masked, window) + head_flops(seq_len, d_model)",
        new="stack_flops(seq_len, d_model, n_layers, skip_masked) + head_flops(seq_len, d_model)",
        caught_by=(
            "tests/test_models.py::test_flops_match_the_counter",
            "tests/test_windowed.py::test_windowed_flops_equal_the_counter_at_long_windows",
        ),
        select="decoder_windowed or long_windows",
    ),
    # 9. Tests that recomputed the value under test.
    "slurm_runs_the_wrong_array_task": Mutation(
        why="array task i of the SLURM script runs sweep run i - 1",
        path="experiments/sweep.py",
        old='srun bash -c "${{runs[$SLURM_ARRAY_TASK_ID]}}"',
        new='srun bash -c "${{runs[$SLURM_ARRAY_TASK_ID - 1]}}"',
        caught_by=("tests/test_sweep.py::test_print_commands_and_slurm",),
    ),
}
