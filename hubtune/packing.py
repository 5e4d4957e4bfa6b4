"""Packing in the data's order (data.packing_strategy: sequential).

TRL packs best-fit decreasing (bfd: rows mix examples from anywhere in the data) or cuts the token stream
anywhere (wrapped). Sequential packing keeps the order: each row takes whole examples as they come until the
next one does not fit, then a new row starts (next-fit, as Axolotl's sample_packing_sequentially). The rows
have exactly the columns TRL's bfd writes (input_ids, labels, seq_lengths), so TRL's padding-free collator
turns seq_lengths into position_ids that restart at each example and attention never crosses two examples.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset
from trl import SFTTrainer


def next_fit_bins(lengths, seq_length: int) -> list[int]:
    """How many consecutive examples each row holds: a row takes examples in order while they fit."""
    counts: list[int] = []
    space = 0
    for n in lengths:
        if n > space:
            counts.append(1)
            space = seq_length - n
        else:
            counts[-1] += 1
            space -= n
    return counts


def _pack_in_order(examples: pa.Table, seq_length: int) -> pa.Table:
    columns = [column.chunks[0] for column in examples.combine_chunks().columns]
    lengths = pc.list_value_length(columns[0])
    keep = pc.greater(lengths, 0)  # as bfd: empty examples hold nothing to learn
    # As bfd, an example over seq_length keeps its first seq_length tokens (data.truncate: true only;
    # otherwise the data step has dropped it).
    columns = [pc.list_slice(pc.filter(column, keep), 0, seq_length) for column in columns]
    lengths = pc.list_value_length(columns[0])
    counts = next_fit_bins(lengths.to_numpy(), seq_length)
    rows = np.cumsum([0] + counts)
    token_ends = np.concatenate([[0], np.cumsum(lengths.to_numpy(), dtype=np.int64)])[rows]
    packed = []
    for column in columns:
        dtype = column.offsets.type.to_pandas_dtype()
        packed.append(type(column).from_arrays(token_ends.astype(dtype), column.flatten()))
    seq_lengths = pa.ListArray.from_arrays(rows.astype(np.int32), lengths)
    return pa.Table.from_arrays(packed + [seq_lengths], names=examples.column_names + ["seq_lengths"])


def pack_in_order(dataset: Dataset, seq_length: int) -> Dataset:
    """Rows of at most seq_length tokens, filled with whole examples in the dataset's order; each row's
    seq_lengths lists its examples' lengths (TRL's bfd columns). The whole dataset is one batch, so no row
    boundary falls where a map batch would end."""
    format = dict(dataset.format)
    format.update(format.pop("format_kwargs", {}))
    if format.get("columns"):
        format["columns"] = format["columns"] + ["seq_lengths"]
    packed = dataset.with_format("arrow").map(_pack_in_order, batched=True, batch_size=None,
                                              fn_kwargs={"seq_length": seq_length}, desc="Packing in order")
    return packed.with_format(**format)


class SequentialPackingSFTTrainer(SFTTrainer):
    """SFTTrainer whose packing keeps the data's order. Its SFTConfig asks for bfd packing, so TRL sets up
    the padding-free collator that reads seq_lengths; the tokenized examples are then packed here instead
    of by TRL's best-fit packer."""

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        # TRL tokenizes, builds the labels and (with data.truncate) cuts examples at max_length.
        dataset = super()._prepare_dataset(dataset, processing_class, args, False, formatting_func, dataset_name)
        if not packing:
            return dataset
        return pack_in_order(dataset.select_columns(["input_ids", "labels"]), args.max_length)
