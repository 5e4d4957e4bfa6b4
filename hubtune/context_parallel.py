"""Context parallelism: each row of a batch split along the sequence over the processes of a group, each
computing its own contiguous chunk, with every packed example kept apart.

Attention: each process gathers the keys and values of the whole row from the group (a differentiable
all-gather, as Llama 3's context parallelism does) and attends from its own queries under the document mask
that the row's position_ids give (causal, and only within the packed example a token belongs to).

Mamba-2 (Nemotron-H's mixers): the causal conv1d of each chunk takes the kernel-1 inputs before it (from
the chunks before) as its left context, and the scan starts from the state the chunks before it leave, composed over
the group (each chunk's final state and its decay, reset where a packed example starts); the scan's output is
linear in that state, so each chunk adds its contribution to the tokens before its first example start. Both
exchanges are all-gathers whose backward sums the gradients of every process, so gradients cross chunks.

The loss of a chunk is its tokens' share: the labels are shifted over the whole row before it is cut, so the
last token of a chunk predicts the first of the next. Summed over the group, the losses and gradients are
those of one process over the whole row (tests/context_parallel_same.py checks it on a gloo mesh).

Without context parallelism the same scan and conv, with a group of one, keep a packed row's examples apart in
Nemotron-H's Mamba-2 layers (transformers' torch path carries the state from one example into the next); where
mamba-ssm's and causal-conv1d's CUDA kernels run, they get seq_idx instead (keep_packed_examples_apart)."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hubtune.recurrent import packed

ATTENTION = "hubtune_context_parallel"


@dataclass
class Split:
    """This process's chunk of the batch being computed: the group, its place in it, and the document ids of
    the whole rows (a new id where position_ids restart at 0; -1 on padding)."""

    group: object  # torch.distributed ProcessGroup, or None for one process
    rank: int
    size: int
    documents: torch.Tensor  # (batch, sequence) of the whole rows
    start: int
    length: int

    @property
    def local_documents(self) -> torch.Tensor:
        return self.documents[:, self.start:self.start + self.length]


_active: Split | None = None


def active() -> Split | None:
    return _active


@contextlib.contextmanager
def computing(split: Split):
    """The model's attention and Mamba layers compute this chunk of the rows while the block runs (the backward
    pass included: gradient checkpointing recomputes layers there)."""
    global _active
    previous, _active = _active, split
    try:
        yield
    finally:
        _active = previous


class _Gather(torch.autograd.Function):
    """All-gather along dim 0; the backward sums every process's gradient of the whole and hands each its own
    part (a reduce-scatter: NCCL's, or an all-reduce on backends without one, such as gloo)."""

    @staticmethod
    def forward(ctx, tensor, group, size):
        import torch.distributed as dist

        ctx.group, ctx.size = group, size
        out = tensor.new_empty((size * tensor.shape[0], *tensor.shape[1:]))
        dist.all_gather_single(out, tensor.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous()
        rank = dist.get_rank(ctx.group)
        if dist.get_backend(ctx.group) == "nccl":
            out = grad.new_empty((grad.shape[0] // ctx.size, *grad.shape[1:]))
            dist.reduce_scatter_single(out, grad, group=ctx.group)
            return out, None, None
        dist.all_reduce(grad, group=ctx.group)
        return grad.chunk(ctx.size)[rank].contiguous(), None, None


def gather(tensor: torch.Tensor, split: Split, dim: int) -> torch.Tensor:
    """The group's chunks of tensor concatenated along dim, in rank order; its backward sums every process's
    gradient for this process's chunk. Every process must use the result (its backward is a collective too)."""
    if split.size == 1:
        return tensor
    moved = tensor.movedim(dim, 0)
    return _Gather.apply(moved, split.group, split.size).movedim(0, dim)


def document_ids(position_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A packed example starts where position_ids restart at 0 (as TRL's padding-free packing writes them);
    padding gets -1."""
    documents = torch.cumsum((position_ids == 0).long(), dim=-1)
    if attention_mask is not None and attention_mask.dim() == 2:
        documents = documents.masked_fill(attention_mask == 0, -1)
    return documents


def split_batch(inputs: dict, group, rank: int, size: int) -> tuple[dict, Split]:
    """This process's contiguous chunk of each row of a batch (input_ids, labels, position_ids, attention_mask,
    shift_labels), with shift_labels made over the whole rows first so that a chunk's last token predicts the
    next chunk's first; the rows' length must be a multiple of size (the collator pads them to it)."""
    input_ids = inputs["input_ids"]
    rows, length = input_ids.shape
    if length % size:
        raise ValueError(f"context parallelism over {size} processes needs rows whose length is a multiple of "
                         f"{size}, got {length} (pad_to_multiple_of)")
    position_ids = inputs.get("position_ids")
    if position_ids is None:
        position_ids = torch.arange(length, device=input_ids.device).expand(rows, -1)
    mask = inputs.get("attention_mask")
    out = dict(inputs)
    if "labels" in inputs and "shift_labels" not in inputs:
        out["shift_labels"] = F.pad(inputs["labels"], (0, 1), value=-100)[:, 1:]
    chunk = length // size
    start = rank * chunk
    for key in ("input_ids", "labels", "shift_labels", "attention_mask"):
        if isinstance(out.get(key), torch.Tensor) and out[key].dim() == 2:
            out[key] = out[key][:, start:start + chunk].contiguous()
    out["position_ids"] = position_ids[:, start:start + chunk].contiguous()
    out.pop("attention_mask", None)  # the layers read the document mask from the split
    out.pop("seq_lengths", None)
    return out, Split(group, rank, size, document_ids(position_ids, mask), start, chunk)


# ---- attention --------------------------------------------------------------------------------------------
def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              **kwargs):
    """transformers' attention interface: this chunk's queries over the whole rows' keys and values, under the
    document mask; plain SDPA with the model's own mask where no split is active (generation, one process)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    split = _active
    if split is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    key, value = gather(key, split, 2), gather(value, split, 2)
    documents = split.documents.to(query.device)
    queries = documents[:, split.start:split.start + split.length]
    q_pos = torch.arange(split.start, split.start + split.length, device=query.device)
    k_pos = torch.arange(documents.shape[1], device=query.device)
    mask = (k_pos[None, :] <= q_pos[:, None])[None] & (queries[:, :, None] == documents[:, None, :])
    mask = mask & (documents[:, None, :] >= 0)
    mask = mask | (k_pos[None, :] == q_pos[:, None])[None]  # a padding query sees itself (its loss is ignored)
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, key, value, mask[:, None], dropout=dropout, scaling=scaling,
                                  is_causal=False, **kwargs)


def _mask(*args, **kwargs):
    """transformers' mask interface for ATTENTION: none to build under a split (the attention makes the document
    mask itself), SDPA's otherwise."""
    from transformers.masking_utils import sdpa_mask

    return None if _active is not None else sdpa_mask(*args, **kwargs)


def register() -> str:
    """Make ATTENTION a name transformers' models accept as their attention implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, _mask)
    return ATTENTION


# ---- Mamba-2 ------------------------------------------------------------------------------------------------
def _segment_sum(x: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = sum of x[..., j+1 .. i] for j <= i, -inf above the diagonal (as transformers' segment_sum)."""
    length = x.size(-1)
    x = x[..., None].expand(*x.size(), length)
    below = torch.tril(torch.ones(length, length, device=x.device, dtype=torch.bool), diagonal=-1)
    x = x.masked_fill(~below, 0)
    sums = torch.cumsum(x, dim=-2)
    keep = torch.tril(torch.ones(length, length, device=x.device, dtype=torch.bool), diagonal=0)
    return sums.masked_fill(~keep, -torch.inf)


def scan(x, dt, A, B, C, documents, chunk_size: int):
    """Mamba-2's chunked scan (transformers' mamba2_chunk_scan) from a zero state, restarted where documents
    change. x (b, l, h, p) already multiplied by dt; dt (b, l, h) discretised; B, C (b, l, h, n); documents
    (b, l), non-decreasing, 0 for tokens that continue the state entering the chunk. Returns y (b, l, h, p),
    the final state (b, h, p, n) and the document it belongs to (b,)."""
    batch, length, heads, dim = x.shape
    pad = (chunk_size - length % chunk_size) % chunk_size
    a = A[None, None, :] * dt  # (b, l, h)

    def chunks(t):
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(batch, -1, chunk_size, *t.shape[2:])

    docs = F.pad(documents[..., None].float(), (0, 0, 0, pad), mode="replicate")[..., 0].long()
    docs = docs.reshape(batch, -1, chunk_size)  # (b, c, q)
    x, a, B, C = chunks(x), chunks(a), chunks(B), chunks(C)
    a = a.permute(0, 3, 1, 2)  # (b, h, c, q)
    a_cum = torch.cumsum(a, dim=-1)

    # 1. within each chunk: the SSM as masked attention, across examples masked out
    same = (docs[..., :, None] == docs[..., None, :])  # (b, c, l, s)
    decay = torch.exp(_segment_sum(a)) * same[:, None]  # (b, h, c, l, s)
    scores = torch.einsum("bclhn,bcshn->bclsh", C, B) * decay.permute(0, 2, 3, 4, 1)
    y_diag = torch.einsum("bclsh,bcshp->bclhp", scores, x)

    # 2. each chunk's state at its end, from the tokens of the chunk's last example
    last = docs[..., -1]  # (b, c)
    in_last = (docs == last[..., None]).to(x.dtype)
    to_end = torch.exp(a_cum[..., -1:] - a_cum) * in_last[:, None]  # (b, h, c, q)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, to_end, x)

    # 3. states carried between chunks, only within one example (the entering state is example 0's)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    ends = torch.cat([torch.zeros_like(last[:, :1]), last], dim=1)  # (b, c + 1)
    carry = torch.exp(_segment_sum(F.pad(a_cum[..., -1], (1, 0))))  # (b, h, target, source)
    carry = carry * (ends[:, None, :, None] == ends[:, None, None, :])
    states = torch.einsum("bhzc,bchpn->bzhpn", carry, states)
    entering, final = states[:, :-1], states[:, -1]

    # 4. each chunk's entering state read out by its tokens of the same example
    reads = torch.exp(a_cum) * (docs == ends[:, :-1, None])[:, None]  # (b, h, c, q)
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, entering, reads)
    y = (y_diag + y_off).reshape(batch, -1, heads, dim)[:, :length]
    return y, final, last[:, -1]


def _causal_conv(mixer, xbc: torch.Tensor, split: Split) -> torch.Tensor:
    """The mixer's depthwise causal conv1d over (b, l, channels), its left context the kernel-1 inputs before
    the chunk (from the chunks before it: the last ones, or all of them where chunks are shorter), each output
    reading only inputs of its own example."""
    weight = mixer.conv1d.weight[:, 0, :]  # (channels, k)
    k, length = weight.shape[-1], xbc.shape[1]
    own = split.local_documents.to(xbc.device)
    before_x = torch.zeros_like(xbc[:, :0])
    if split.size > 1:
        tail = min(length, k - 1)
        tails = gather(xbc[:, length - tail:], split, 1)  # (b, size x tail, channels)
        # nothing before the first chunk, but its gather's backward must run there as on the others
        before_x = tails[:, :split.rank * tail][:, -(k - 1):] if split.rank else tails[:, :0] * 0
    before_docs = split.documents[:, split.start - before_x.shape[1]:split.start].to(own.device)
    missing = k - 1 - before_x.shape[1]  # before the row's start: zeros, as the conv's own padding
    extended = torch.cat([xbc.new_zeros(xbc.shape[0], missing, xbc.shape[2]), before_x, xbc], dim=1)
    extended_docs = torch.cat([torch.full_like(own[:, :missing], -2), before_docs, own], dim=1)
    out = 0
    for j in range(k):
        same = (extended_docs[:, j:j + length] == own)[..., None].to(xbc.dtype)
        out = out + extended[:, j:j + length] * weight[:, j].to(xbc.dtype) * same
    if mixer.conv1d.bias is not None:
        out = out + mixer.conv1d.bias.to(xbc.dtype)
    return mixer.act(out)


def mamba2_forward(mixer, hidden_states: torch.Tensor, split: Split) -> torch.Tensor:
    """A Nemotron-H Mamba-2 mixer's forward over this process's chunk (its torch path, with the chunk's entering
    state and conv context from the processes before it)."""
    batch, length, _ = hidden_states.shape
    dtype = hidden_states.dtype
    own = split.local_documents.to(hidden_states.device)
    valid = (own >= 0)[..., None].to(dtype)
    projected = mixer.in_proj(hidden_states * valid)
    gate, xbc, dt = projected.split([mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1)
    xbc = _causal_conv(mixer, xbc, split) * valid
    groups, state = mixer.n_groups, mixer.ssm_state_size
    x, B, C = torch.split(xbc, [mixer.intermediate_size, groups * state, groups * state], dim=-1)
    heads, dim = mixer.num_heads, mixer.head_dim
    A = -torch.exp(mixer.A_log.float())
    dt = F.softplus(dt.float() + mixer.dt_bias.float())
    dt = torch.clamp(dt, mixer.time_step_limit[0], mixer.time_step_limit[1])
    x = x.float().reshape(batch, length, heads, dim)
    B = B.float().reshape(batch, length, groups, state).repeat_interleave(heads // groups, dim=2)
    C = C.float().reshape(batch, length, groups, state).repeat_interleave(heads // groups, dim=2)
    # Documents numbered from 0 within the chunk: 0 is the example that continues from the chunk before.
    first = split.documents[:, split.start - 1:split.start] if split.start else own[:, :1] - 1
    local = (own - first.to(own.device)).clamp(min=0)
    local = torch.cummax(local, dim=1).values  # padding (-1) inherits the example before it
    y, final, final_doc = scan(x * dt[..., None], dt, A, B, C, local, mixer.chunk_size)
    if split.size > 1:
        # The state entering this chunk: the chunks before, composed in order (state, decay over the chunk,
        # zero where an example starts in it).
        through = torch.exp((A[None, :] * dt).sum(dim=1)) * (final_doc == 0)[:, None]  # (b, h)
        finals, throughs = gather(final[None], split, 0), gather(through[None], split, 0)
        # Zero from both on the first process, whose gathers' backward must run as on the others.
        entering = (finals * 0).sum(0) + (throughs * 0).sum(0)[..., None, None]
        for q in range(split.rank):
            entering = throughs[q][..., None, None] * entering + finals[q]
        a_cum = torch.cumsum(A[None, None, :] * dt, dim=1)  # (b, l, h)
        reads = torch.exp(a_cum) * (local == 0)[..., None]
        y = y + torch.einsum("blhn,bhpn,blh->blhp", C, entering, reads)
    y = y + x * mixer.D.float()[None, None, :, None]
    y = y.reshape(batch, length, -1)
    y = mixer.norm(y, gate)
    return mixer.out_proj(y.to(dtype))


MIXERS = ("NemotronHMamba2Mixer",)
BLOCKS = ("NemotronHBlock",)  # their position_ids say where packed examples start; their Mamba mixers get no ids


def seq_idx(position_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """mamba-ssm's and causal-conv1d's seq_idx: each token's packed example, from 0 in every row, int32
    (as Axolotl's get_seq_idx); padding belongs to the example before it (its outputs are ignored)."""
    documents = torch.cummax(document_ids(position_ids, attention_mask), dim=-1).values
    return (documents - documents[..., :1]).to(torch.int32)


@functools.cache
def kernels_keep_examples_apart() -> bool:
    """Whether transformers' Nemotron-H mixers run mamba-ssm's and causal-conv1d's kernels, which restart at
    seq_idx's boundaries (transformers' torch fallbacks would refuse seq_idx). transformers picks each package
    when it imports, as here."""
    import importlib

    try:
        ssd = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        conv = importlib.import_module("causal_conv1d")
    except Exception:
        return False
    return all(hasattr(ssd, name) for name in ("mamba_chunk_scan_combined", "mamba_split_conv1d_scan_combined")) \
        and hasattr(conv, "causal_conv1d_fn")


def _block_forward(block, original):
    """A Nemotron-H block's forward that keeps a packed row's examples apart in its Mamba-2 mixer: seq_idx
    handed to mamba-ssm's kernels on CUDA, hubtune's example-aware scan and conv (a group of one) elsewhere.
    Both reach the mixer as keyword arguments, so a recomputation under gradient checkpointing does the same."""

    def forward(*args, **kwargs):
        position_ids = kwargs.get("position_ids")
        # Packed rows come without a cache (TRL's trainers pass use_cache=False, and transformers' attention
        # reads packed position_ids only then); generation's left-padded rows restart position_ids too.
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if (_active is not None or block.block_type != "linear_attention" or position_ids is None
                or cache is not None or not packed(position_ids)):
            return original(*args, **kwargs)
        hidden_states = args[0] if args else kwargs["hidden_states"]
        mask = kwargs.get("attention_mask")
        mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        if hidden_states.is_cuda and kernels_keep_examples_apart():
            # The block hands its keyword arguments to the mixer, which hands them to the kernels
            # (mamba_split_conv1d_scan_combined in training, causal_conv1d_fn and mamba_chunk_scan_combined else).
            return original(*args, **kwargs, seq_idx=seq_idx(position_ids, mask))
        # Handed to the mixer as a keyword argument (the block passes its own on), which transformers' gradient
        # checkpointing, wrapped around the block's class forward, keeps for the recomputation.
        split = Split(None, 0, 1, document_ids(position_ids, mask), 0, position_ids.shape[-1])
        return original(*args, **kwargs, packed_examples=split)

    return forward


def patch_mixers(model) -> int:
    """Route every Nemotron-H Mamba-2 mixer of model through mamba2_forward while a split is active (its own
    forward otherwise), and make each block over one of them keep packed examples apart (_block_forward);
    the number of mixers."""
    count = 0
    for module in model.modules():
        if type(module).__name__ in BLOCKS and not getattr(module, "_packed_examples_apart", False):
            module.forward = _block_forward(module, module.forward)
            module._packed_examples_apart = True
        if type(module).__name__ in MIXERS and not getattr(module, "_context_parallel", False):
            original = module.forward

            def forward(hidden_states, *args, _module=module, _original=original, **kwargs):
                split = kwargs.pop("packed_examples", None) or _active
                if split is None:
                    return _original(hidden_states, *args, **kwargs)
                return mamba2_forward(_module, hidden_states, split)

            module.forward = forward
            module._context_parallel = True
            count += 1
    return count


def keep_packed_examples_apart(model) -> int:
    """Without context parallelism: each example of a packed row starts its Mamba-2 layers from a zero state and
    an empty conv window, as run alone (transformers' Nemotron-H forward carries them from the example before),
    and the other families' recurrent mixers too (hubtune.recurrent.keep_examples_apart); the number of mixers,
    0 for models without them."""
    from hubtune import recurrent

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return patch_mixers(base) + recurrent.keep_examples_apart(base)


def prepare(model) -> None:
    """The model computes under splits: attention through ATTENTION, Mamba-2 mixers through mamba2_forward."""
    register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(ATTENTION)
    patch_mixers(base)


# ---- the Trainer ------------------------------------------------------------------------------------------
def groups(size: int):
    """This process's context-parallel group (consecutive ranks, size of them) and its rank in it; every process
    creates every group, as torch.distributed asks."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    mine = None
    for first in range(0, world, size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            mine = group
    return mine, rank % size


class ContextParallelTrainer:
    """Mixed into a TRL trainer: the processes of each group read the same batches (the data is sharded over
    the groups), and each computes its chunk of every row, in training and in evaluation. accelerate is given
    no context-parallel mesh (its own CP drops every attention mask), so the launch is a plain DDP or FSDP one."""

    context_parallel_size = 1

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        self._context_group, self._context_rank = groups(self.context_parallel_size)
        accelerator, size = self.accelerator, self.context_parallel_size

        def prepare_data_loader(data_loader, device_placement=None, slice_fn_for_dispatch=None):
            """accelerate's own preparation, sharding over the groups rather than the processes."""
            from accelerate.data_loader import prepare_data_loader as prepare

            prepared = prepare(
                data_loader, accelerator.device, num_processes=accelerator.num_processes // size,
                process_index=accelerator.process_index // size, split_batches=accelerator.split_batches,
                put_on_device=accelerator.device_placement if device_placement is None else device_placement,
                rng_types=accelerator.rng_types.copy(), dispatch_batches=accelerator.dispatch_batches,
                even_batches=accelerator.even_batches, slice_fn_for_dispatch=slice_fn_for_dispatch,
                use_seedable_sampler=accelerator.use_seedable_sampler,
                data_seed=accelerator.dataloader_config.data_seed, non_blocking=accelerator.non_blocking,
                use_stateful_dataloader=accelerator.use_stateful_dataloader)
            accelerator._dataloaders.append(prepared)
            return prepared

        accelerator.prepare_data_loader = prepare_data_loader

    def get_cp_size(self) -> int:
        # The Trainer divides the batch's token count by it (each group's processes count the same batch) and
        # the data-parallel size by it.
        return self.context_parallel_size

    def _track_num_input_tokens(self, inputs):
        # The Trainer sums every process's batch; the processes of a group read the same one.
        before = self.state.num_input_tokens_seen
        super()._track_num_input_tokens(inputs)
        self.state.num_input_tokens_seen = before + (self.state.num_input_tokens_seen - before) // self.context_parallel_size

    def _split(self, inputs: dict) -> tuple[dict, Split]:
        return split_batch(inputs, self._context_group, self._context_rank, self.context_parallel_size)

    def _prepare_context_parallel_inputs(self, model, inputs):
        import functools

        local, split = self._split(inputs)
        return functools.partial(computing, split), local

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The held-out loss of the whole rows: each process's share of it, scaled so that the mean the
        evaluation loop takes over the processes is each batch's token mean."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            local, split = self._split(inputs)
            tokens = (local["shift_labels"] != -100).sum()
            if split.group is not None:
                import torch.distributed as dist

                dist.all_reduce(tokens, group=split.group)
            with self.compute_loss_context_manager(), computing(split):
                loss = self.compute_loss(model, local, num_items_in_batch=tokens)
        if self.args.average_tokens_across_devices:  # compute_loss multiplied it by the processes
            loss = loss / (self.accelerator.num_processes // self.get_tp_size())
        return loss.detach() * split.size, None, None


def trainer_class(base: type, size: int) -> type:
    return type(f"ContextParallel{base.__name__}", (ContextParallelTrainer, base), {"context_parallel_size": size})
