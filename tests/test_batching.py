"""Packing and the answer-only LM head change the cost of a step, never what is learned."""

import itertools
import json

import pytest
import torch

from conftest import make_label_rows, write_config, write_csv
from tunelab.config import load_config
from tunelab.data.examples import rows_to_examples
from tunelab.data.prepare import prepare_stage
from tunelab.model.adapters import attach_adapters
from tunelab.model.batching import (
    IGNORE_INDEX,
    BatchCollator,
    _accepts_logits_to_keep,
    _first_fit_decreasing,
    _packed_rows,
    answer_only_loss,
    model_inputs,
    packs_into_one_row,
)
from tunelab.rundir import RunDir, read_jsonl
from tunelab.train.trainer import encode_split, run_training, store_frozen_linears_in_bf16


def build_lora(model_dir, frozen_in_bf16: bool = False):
    from transformers import AutoModelForCausalLM

    from tunelab.config import TrainConfig

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    if frozen_in_bf16:
        store_frozen_linears_in_bf16(model)
    torch.manual_seed(0)
    model = attach_adapters(model, TrainConfig(lora={"r": 8, "alpha": 16, "dropout": 0.0}))
    for name, parameter in model.named_parameters():  # LoRA B starts at zero: give the gradients something to flow
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    return model


@pytest.fixture
def lora_model(tiny_model_dir):
    return build_lora(tiny_model_dir)


@pytest.fixture
def features(tiny_tokenizer):
    from tunelab.config import DataConfig

    settings = DataConfig(source="x.csv", input_column="text", label_column="label", system_prompt="Name it.")
    rows = make_label_rows(per_label=3, seed=3)
    rows[0]["text"] += " It started after a long trip abroad and has not stopped since then at all."
    examples = rows_to_examples(rows, settings, "x.csv")
    return list(encode_split(tiny_tokenizer, examples, 256)[0])


def loss_and_grads(model, compute):
    model.zero_grad()
    loss = compute()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def full_head_loss(model, batch, num_items=None):
    """transformers' own causal-LM loss over the full logits (what the trainer does with the switch off)."""
    extra = {"num_items_in_batch": num_items} if num_items is not None else {}
    return model(**model_inputs(batch), **extra).loss


def assert_same(first, second, tolerance=1e-5):
    (loss_a, grads_a), (loss_b, grads_b) = first, second
    assert torch.allclose(loss_a, loss_b, atol=tolerance), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=tolerance, rtol=1e-4), name


def test_rows_are_packed_within_capacity_and_keep_every_token(features, tiny_tokenizer):
    lengths = [len(f["input_ids"]) for f in features]
    capacity = max(lengths) + 10
    rows = _first_fit_decreasing(lengths, capacity)
    assert sorted(i for row in rows for i in row) == list(range(len(features)))
    assert all(sum(lengths[i] for i in row) <= capacity for row in rows) and len(rows) < len(features)
    batch = BatchCollator(tiny_tokenizer.pad_token_id, capacity)(features)
    assert int(batch["attention_mask"].sum()) == sum(lengths)
    assert batch["input_ids"].numel() <= len(features) * max(lengths)  # never more slots than padding
    assert batch["input_ids"].shape[1] <= capacity
    starts = (batch["position_ids"] == 0) & (batch["attention_mask"] == 1)
    assert int(starts.sum()) == len(features) and (batch["labels"][starts] == IGNORE_INDEX).all()
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(
        sum(1 for t in f["labels"][1:] if t != IGNORE_INDEX) for f in features)


def test_packed_logits_equal_unpacked_ones(lora_model, features, tiny_tokenizer):
    lengths = [len(f["input_ids"]) for f in features]
    padded = BatchCollator(tiny_tokenizer.pad_token_id)(features)
    packed = BatchCollator(tiny_tokenizer.pad_token_id, 120)(features)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    with torch.no_grad():
        unpacked_logits = lora_model(**model_inputs(padded)).logits
        packed_logits = lora_model(**model_inputs(packed)).logits
    for row, members in enumerate(_packed_rows(lengths, 120)):
        offset = 0
        for index in members:
            segment = packed_logits[row, offset:offset + lengths[index]]
            assert torch.allclose(segment, unpacked_logits[index, :lengths[index]], atol=1e-5), index
            offset += lengths[index]


def test_packed_loss_and_gradients_equal_unpacked(lora_model, features, tiny_tokenizer):
    padded = BatchCollator(tiny_tokenizer.pad_token_id)(features)
    packed = BatchCollator(tiny_tokenizer.pad_token_id, 120)(features)
    assert_same(loss_and_grads(lora_model, lambda: full_head_loss(lora_model, padded)),
                loss_and_grads(lora_model, lambda: full_head_loss(lora_model, packed)))


def test_answer_only_head_loss_and_gradients_equal_the_full_head(lora_model, features, tiny_tokenizer):
    for capacity in (None, 120):
        batch = BatchCollator(tiny_tokenizer.pad_token_id, capacity)(features)
        assert_same(loss_and_grads(lora_model, lambda b=batch: full_head_loss(lora_model, b)),
                    loss_and_grads(lora_model, lambda b=batch: answer_only_loss(lora_model, b)))
        # With gradient accumulation the trainer normalises by the whole accumulated batch's count.
        assert_same(loss_and_grads(lora_model, lambda b=batch: full_head_loss(lora_model, b, torch.tensor(50))),
                    loss_and_grads(lora_model, lambda b=batch: answer_only_loss(lora_model, b, torch.tensor(50))))


def test_models_without_logits_to_keep_get_the_same_loss(tiny_model_dir, features, tiny_tokenizer):
    """Remote-code models may lack `logits_to_keep`: the loss then comes from the full logits."""
    from transformers import Qwen2ForCausalLM

    class WithoutLogitsToKeep(Qwen2ForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, use_cache=None):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=use_cache)

    batch = BatchCollator(tiny_tokenizer.pad_token_id, 120)(features)
    plain = WithoutLogitsToKeep.from_pretrained(tiny_model_dir)
    own = Qwen2ForCausalLM.from_pretrained(tiny_model_dir)
    assert _accepts_logits_to_keep(own) and not _accepts_logits_to_keep(plain)  # the head runs on answers only
    with torch.no_grad():
        expected = full_head_loss(own, batch)
        assert torch.allclose(answer_only_loss(plain, batch), expected, atol=1e-5)


def test_frozen_weights_stored_in_bf16_equal_autocasting_them(tiny_model_dir, features, tiny_tokenizer):
    """bf16 mixed precision rounds each frozen weight to bf16 for every matmul; storing it rounded is the same."""
    batch = BatchCollator(tiny_tokenizer.pad_token_id, 120)(features)
    results = []
    for frozen_in_bf16 in (False, True):
        model = build_lora(tiny_model_dir, frozen_in_bf16)
        stored = {m.weight.dtype for m in model.modules() if isinstance(m, torch.nn.Linear)}
        assert (torch.bfloat16 in stored) == frozen_in_bf16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(loss_and_grads(model, lambda m=model: answer_only_loss(m, batch)))
    assert_same(*results, tolerance=1e-6)


def test_training_learns_the_same_with_every_switch(tmp_path, tiny_model_dir):
    """Three steps with gradient accumulation: same losses and weights, packed or not, full head or not."""
    csv = write_csv(tmp_path / "d.csv", make_label_rows(per_label=10))
    path = write_config(tmp_path, {"source": str(csv)}, tiny_model_dir,
                        train={"max_steps": 3, "per_device_batch_size": 4, "gradient_accumulation_steps": 2,
                               "group_by_length": False, "mixed_precision": "no"})
    prepared = RunDir(tmp_path / "prepared")
    prepare_stage(load_config(path), prepared)
    outcomes = {}
    for packing, answer_only in ((None, False), (256, False), (None, True), (256, True)):
        config = load_config(path, [f"train.pack_row_tokens={packing or 'null'}",
                                    f"train.answer_only_lm_head={answer_only}",
                                    f"output_dir={tmp_path / f'run-{packing}-{answer_only}'}"])
        run_dir = RunDir(config.output_dir, data=prepared.data)
        outcome = run_training(config, run_dir)
        losses = [r["loss"] for r in read_jsonl(run_dir.root / "train_log.jsonl") if "loss" in r]
        weights = {n: p.detach().clone() for n, p in outcome.model.named_parameters() if p.requires_grad}
        outcomes[(packing, answer_only)] = (losses, weights)
        assert json.loads((run_dir.model / "training_summary.json").read_text())["steps"] == 3
    reference_losses, reference_weights = outcomes[(None, False)]
    for losses, weights in outcomes.values():
        assert losses == pytest.approx(reference_losses, abs=1e-4)
        for name, value in weights.items():
            # Adam divides by the gradient's own scale, so 1e-7 noise in tiny gradients shows as ~1e-5.
            assert torch.allclose(value, reference_weights[name], atol=1e-4), name


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa", "flex_attention", "flash_attention_2",
                                                 "flash_attention_3"])
def test_packed_batches_are_read_as_separate_sequences_by_each_backend(features, tiny_tokenizer,
                                                                       attn_implementation):
    """transformers' own readers of position_ids find one sequence per example: FlashAttention's only in a
    one-row batch (`_is_packed_sequence`), the mask builders' in any number of rows."""
    from transformers.masking_utils import find_packed_sequence_indices
    from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

    lengths = [len(f["input_ids"]) for f in features]
    collate = BatchCollator(tiny_tokenizer.pad_token_id, 120, one_row=packs_into_one_row(attn_implementation))
    batch = model_inputs(collate(features))
    assert "attention_mask" not in batch
    positions = batch["position_ids"]
    if attn_implementation.startswith("flash"):
        assert positions.shape[0] == 1 and _is_packed_sequence(positions, batch_size=1)
        (cu_seq_lens, _), _ = prepare_fa_kwargs_from_position_ids(positions)
        boundaries = cu_seq_lens.tolist()
        assert boundaries[-1] == positions.shape[1] == sum(lengths)
        assert sorted(b - a for a, b in itertools.pairwise(boundaries)) == sorted(lengths)
    else:
        assert positions.shape[0] > 1  # short rows: attention costs the square of a row's length
        segments = find_packed_sequence_indices(positions)
        real_tokens = collate(features)["attention_mask"].sum(1).tolist()
        sizes = [size for row, n in enumerate(real_tokens)
                 for size in torch.unique_consecutive(segments[row, :n], return_counts=True)[1].tolist()]
        assert sorted(sizes) == sorted(lengths)
        # and multi-row packing is exactly what FlashAttention would misread
        assert not _is_packed_sequence(positions, batch_size=positions.shape[0])


def test_one_row_packing_gives_per_example_logits_equal_to_padding(lora_model, features, tiny_tokenizer):
    lengths = [len(f["input_ids"]) for f in features]
    padded = BatchCollator(tiny_tokenizer.pad_token_id)(features)
    one_row = BatchCollator(tiny_tokenizer.pad_token_id, 120, one_row=True)(features)
    assert one_row["input_ids"].shape == (1, sum(lengths)) and bool(one_row["attention_mask"].all())
    with torch.no_grad():
        padded_logits = lora_model(**model_inputs(padded)).logits
        packed_logits = lora_model(**model_inputs(one_row)).logits
    offset = 0
    for index, length in enumerate(lengths):
        assert torch.allclose(packed_logits[0, offset:offset + length], padded_logits[index, :length], atol=1e-5)
        offset += length
    assert_same(loss_and_grads(lora_model, lambda: answer_only_loss(lora_model, padded)),
                loss_and_grads(lora_model, lambda: answer_only_loss(lora_model, one_row)))
