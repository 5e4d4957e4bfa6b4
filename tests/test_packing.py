"""Packing in the data's order (data.packing_strategy: sequential): whole examples, in order, into rows with
the columns TRL's best-fit packer writes; and a short real training on such rows."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

import hubtune
from hubtune import config as cfg
from hubtune.errors import ConfigError
from hubtune.hardware import Hardware
from hubtune.interop import axolotl
from hubtune.packing import next_fit_bins, pack_in_order
from hubtune.train import sft_args

from data_rows import invoice_lines, tiny_config

LENGTHS = [3, 5, 2, 6, 1, 4, 4, 2, 7]


def examples(lengths=LENGTHS) -> Dataset:
    """Example i holds tokens 100*i+1 ... ; its labels mask the first token (a prompt)."""
    ids = [[100 * i + j + 1 for j in range(n)] for i, n in enumerate(lengths)]
    return Dataset.from_dict({"input_ids": ids, "labels": [([-100] + row[1:])[:len(row)] for row in ids]})


def test_rows_take_whole_examples_in_order_until_the_next_does_not_fit():
    data = examples()
    packed = pack_in_order(data, 8)
    # Next-fit over 3 5 | 2 6 | 1 4 | 4 2 | 7, as Axolotl's allocate_sequentially bins them.
    assert next_fit_bins(LENGTHS, 8) == [2, 2, 2, 2, 1]
    assert packed["seq_lengths"] == [[3, 5], [2, 6], [1, 4], [4, 2], [7]]
    assert [t for row in packed["input_ids"] for t in row] == [t for row in data["input_ids"] for t in row]
    assert [t for row in packed["labels"] for t in row] == [t for row in data["labels"] for t in row]
    # No example split: each row's seq_lengths cut it into whole examples, the first token of each its own.
    for row, lengths in zip(packed["input_ids"], packed["seq_lengths"]):
        assert len(row) == sum(lengths) <= 8
        starts = [sum(lengths[:k]) for k in range(len(lengths))]
        assert all(row[s] % 100 == 1 for s in starts)
    # Best-fit packs the same examples into other rows; the columns are the same.
    bfd = pack_dataset(data, 8, "bfd")
    assert bfd.column_names == packed.column_names == ["input_ids", "labels", "seq_lengths"]
    assert bfd.features == packed.features
    assert bfd["seq_lengths"] != packed["seq_lengths"]


def test_over_long_and_empty_examples_are_treated_as_bfd_treats_them():
    packed = pack_in_order(examples([0, 10, 2]), 8)
    assert packed["seq_lengths"] == [[8], [2]]  # the empty one dropped, the long one cut at 8, as bfd does
    assert packed["input_ids"][0] == list(range(101, 109))
    assert sorted(map(sorted, pack_dataset(examples([0, 10, 2]), 8, "bfd")["seq_lengths"])) == [[2], [8]]


def test_an_example_exactly_filling_a_row_closes_it():
    assert next_fit_bins([8, 1, 7, 8], 8) == [1, 2, 1]
    assert pack_in_order(examples([8, 1, 7, 8]), 8)["seq_lengths"] == [[8], [1, 7], [8]]


def test_the_padding_free_collator_restarts_positions_at_each_example():
    packed = pack_in_order(examples([3, 2, 4]), 8)
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(list(packed))
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 101, 102, 201, 202, 203, 204]]


def test_sequential_packing_runs_trls_padding_free_path(tmp_path):
    cpu = Hardware("cpu", torch.float32, "adamw_torch")
    config = cfg.build({"data": {"packing": True, "packing_strategy": "sequential"}})
    args = sft_args(config, cpu, tmp_path, has_eval=False)
    # TRL's bfd turns on the collator that reads seq_lengths; hubtune's trainer packs the rows itself.
    assert args.packing and args.packing_strategy == "bfd" and args.max_length == config.data.max_seq_len
    with pytest.raises(ConfigError, match="packing_strategy"):
        cfg.build({"data": {"packing": True, "packing_strategy": "first_fit"}})


class Rows(TrainerCallback):
    """The rows the trainer trains on, read from its data loader."""

    def on_train_begin(self, args, state, control, train_dataloader=None, processing_class=None, **kwargs):
        self.dataset, self.tokenizer = train_dataloader.dataset, processing_class


@pytest.mark.slow
def test_a_run_trains_on_rows_packed_in_the_data_order(tmp_path):
    rows = Rows()
    config = tiny_config(tmp_path, rows=24, data={"packing": True, "packing_strategy": "sequential", "max_seq_len": 256},
                         training={"max_steps": 2, "shuffle": False, "micro_batch_size": 1})
    run = hubtune.train(config, callbacks=[rows])
    assert run.summary is not None and run.summary.global_steps == 2
    packed = rows.dataset
    assert set(packed.column_names) >= {"input_ids", "labels", "seq_lengths"}
    lengths = [n for row in packed["seq_lengths"] for n in row]
    assert len(packed) < len(lengths)  # several examples share rows
    # The rows hold the examples in order: next-fit over the examples' lengths gives the same rows.
    assert [len(row) for row in packed["seq_lengths"]] == next_fit_bins(lengths, 256)
    assert all(len(ids) == sum(n) <= 256 for ids, n in zip(packed["input_ids"], packed["seq_lengths"]))
    # ... in the order of the file: each invoice comes after the one before it.
    text = rows.tokenizer.decode([t for ids in packed["input_ids"] for t in ids])
    at = [text.find(json.loads(line)["input"]) for line in invoice_lines(24)]
    assert -1 not in at and at == sorted(at) and len(lengths) == 24


AXOLOTL = {"base_model": "meta-llama/Llama-3.2-1B", "adapter": "lora", "lora_r": 8, "lora_alpha": 16,
           "datasets": [{"path": "mhenrichsen/alpaca_2k_test", "type": "alpaca"}], "sequence_len": 1024,
           "sample_packing": True, "sample_packing_sequentially": True, "curriculum_sampling": True}


def test_axolotls_sample_packing_sequentially_converts_and_exports_back():
    config = axolotl.from_axolotl(AXOLOTL).run_config()
    assert (config.data.packing, config.data.packing_strategy, config.training.shuffle) == (True, "sequential", False)
    exported = axolotl.to_axolotl(config)
    assert exported["sample_packing_sequentially"] and exported["curriculum_sampling"] and "hubtune" not in exported
    assert axolotl.from_axolotl(exported).run_config() == config
    # Packed in order but drawn at random: Axolotl has no key for it, so it rides under `hubtune:`.
    shuffled = config.model_copy(update={"training": config.training.model_copy(update={"shuffle": True})})
    exported = axolotl.to_axolotl(shuffled)
    assert "sample_packing_sequentially" not in exported and exported["hubtune"]["data"] == {"packing_strategy": "sequential"}
    assert axolotl.from_axolotl(exported).run_config() == shuffled


def test_sequential_packing_with_random_draws_is_refused_and_without_packing_noted():
    refused = axolotl.from_axolotl(dict(AXOLOTL, curriculum_sampling=False)).unsupported
    assert [key for key, _ in refused] == ["sample_packing_sequentially"]
    assert "True without curriculum_sampling" in refused[0][1] and "new random order" in refused[0][1]
    unpacked = axolotl.from_axolotl(dict(AXOLOTL, sample_packing=False))
    assert not unpacked.unsupported and any("packs nothing" in note for note in unpacked.notes)
    assert unpacked.run_config().data.packing is False
