"""The Llama layers run one by one over a shrinking token set (``VLAModel.run_llm``).

Pruning only ever drops visual tokens, and kept tokens stay in their original order, so the
current sequence is always ``[BOS | kept patches | tail]`` where the tail (proprio, prompt,
readout, placeholders, ``</s>``) has a fixed length. Everything here relies on that: the read-out
rows and the attention rows a method asks for are slices of the tail, and a cut given as
visual indices (``PruneResult.keep_visual``) has the length of that list. Nothing between layers waits on the device (no
``.item()``, ``nonzero`` or boolean-mask indexing): RoPE tables and the mask are rebuilt only
after a cut, from tensors whose sizes are known on the host.
"""
from __future__ import annotations

import functools
import time
import warnings

import torch
from transformers.models.llama.modeling_llama import rotate_half


class StageClock:
    """Seconds spent in a stage, summed over its start/stop intervals.

    On CUDA the intervals are CUDA events on the stream, read once when ``total`` is asked for
    (after the forward): no host sync between layers, and queued layer work is not billed to the
    stage that happens to wait for it. On the CPU, the wall clock.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == 'cuda'
        self.device = device
        self._seconds = 0.0
        self._started = 0.0
        self._events: list = []

    def now(self) -> float:
        """Wall-clock time after the device's queued work is done (for whole-stage laps)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events.append([event, None])
        else:
            self._started = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events[-1][1] = event
        else:
            self._seconds += time.perf_counter() - self._started

    @property
    def total(self) -> float:
        if self.cuda and self._events:
            self._events[-1][1].synchronize()
            self._seconds += sum(begin.elapsed_time(end) for begin, end in self._events) / 1000.0
            self._events = []
        return self._seconds


@functools.cache
def compiled(function):
    """``function`` through ``torch.compile`` with dynamic shapes, built once: a pruned token count
    reuses the same graph. It fuses a small layer's elementwise ops (norms, RoPE, residuals), whose
    per-op dispatch is most of a layer's time at a few hundred tokens and 128-512 channels.
    Where compiling fails (no C++ compiler on a CPU host), it warns once and runs ``function`` eagerly."""
    graph = torch.compile(function, dynamic=True)
    failed = []

    @functools.wraps(function)
    def run(*args, **kwargs):
        if not failed:
            try:
                return graph(*args, **kwargs)
            except Exception as error:   # a bug in ``function`` itself raises again below, eagerly
                failed.append(error)
                warnings.warn(f'torch.compile of {function.__name__} failed ({type(error).__name__}: '
                              f'{str(error)[:200]}); running it eagerly', stacklevel=2)
        return function(*args, **kwargs)
    return run


def lean_decoder_layer(layer, hidden: torch.Tensor, cos_sin, mask: torch.Tensor | None, causal: bool,
                       keep_qk: dict | None = None) -> torch.Tensor:
    """``LlamaDecoderLayer.forward`` with sdpa, the same ops in the same order (bit-identical), without
    transformers' per-call dispatch: at a few hundred tokens per-op overhead is much of a layer's time.
    With ``keep_qk`` the rotated (B, heads, L, d) queries and keys are left in it for attention rows."""
    attn, mlp = layer.self_attn, layer.mlp
    batch, length, _ = hidden.shape
    head_dim = attn.head_dim
    normed = layer.input_layernorm(hidden)
    q = attn.q_proj(normed).view(batch, length, -1, head_dim).transpose(1, 2)
    k = attn.k_proj(normed).view(batch, length, -1, head_dim).transpose(1, 2)
    v = attn.v_proj(normed).view(batch, length, -1, head_dim).transpose(1, 2)
    cos, sin = cos_sin[0].unsqueeze(1), cos_sin[1].unsqueeze(1)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    if attn.num_key_value_groups > 1:
        k = k.repeat_interleave(attn.num_key_value_groups, dim=1)
        v = v.repeat_interleave(attn.num_key_value_groups, dim=1)
    if keep_qk is not None:
        keep_qk.update(q=q, k=k)
    dropout = attn.attention_dropout if attn.training else 0.0
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                           is_causal=causal and mask is None, scale=attn.scaling)
    hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
    normed = layer.post_attention_layernorm(hidden)
    return hidden + mlp.down_proj(mlp.act_fn(mlp.gate_proj(normed)) * mlp.up_proj(normed))


def rows_attention(q_tail: torch.Tensor, k: torch.Tensor, scaling: float, key_padding: torch.Tensor | None,
                   causal: bool) -> torch.Tensor:
    """Head-averaged attention probabilities of the last rows, from their rotated (B, heads, tail, d)
    queries and all rotated (B, heads, L, d) keys: (B, tail, L). Padding keys are masked; with
    ``causal`` each row sees only the keys up to itself."""
    tail, length = q_tail.shape[2], k.shape[2]
    # Scaled before the product: the queries are a fraction of the scores' size.
    scores = torch.matmul(q_tail * scaling, k.transpose(2, 3)).float()                # (B, heads, tail, L)
    blocked = None
    if causal:
        rows = torch.arange(length - tail, length, device=q_tail.device)
        blocked = (torch.arange(length, device=q_tail.device)[None, :] > rows[:, None])[None, None]
    if key_padding is not None:
        padded = key_padding[:, None, None, :]
        blocked = padded if blocked is None else blocked | padded
    if blocked is not None:
        scores = scores.masked_fill(blocked, float('-inf'))
    return scores.softmax(dim=-1).mean(dim=1)


def tail_attention(layer: torch.nn.Module, q: torch.Tensor, k: torch.Tensor,
                   cos_sin: tuple[torch.Tensor, torch.Tensor], tail: int, key_padding: torch.Tensor | None,
                   causal: bool) -> torch.Tensor:
    """``rows_attention`` from a layer's projected (unrotated) q/k, as its hooks saw them (eager path)."""
    attn = layer.self_attn
    head_dim = attn.head_dim
    batch, length = k.shape[0], k.shape[1]
    cos, sin = cos_sin[0].unsqueeze(1), cos_sin[1].unsqueeze(1)                 # (B, 1, L, head_dim)
    q = q.view(batch, length, -1, head_dim).transpose(1, 2)[:, :, length - tail:]
    k = k.view(batch, length, -1, head_dim).transpose(1, 2)
    q = q * cos[:, :, length - tail:] + rotate_half(q) * sin[:, :, length - tail:]
    k = k * cos + rotate_half(k) * sin
    k = k.repeat_interleave(attn.num_key_value_groups, dim=1)
    return rows_attention(q, k, attn.scaling, key_padding, causal)


def gather_kept(result, hidden, positions, key_padding, layout):
    """Apply a method's cut. Non-visual tokens are always kept, whatever a method returns.

    ``result.keep_visual`` (unique visual indices) needs nothing from the device: the kept
    sequence is BOS, those tokens in their original order, and the tail. ``result.keep`` (any
    indices) is completed with the non-visual tokens, which needs one device sync.
    """
    if result is None:
        return hidden, positions, key_padding
    if result.hidden is not None:       # soft selection during training: same length, new values
        hidden = result.hidden
    length, device = len(positions), positions.device
    tail = layout.seq_len - layout.patch_end
    if result.keep_visual is not None:
        order = result.keep_visual.argsort()
        index = torch.cat([torch.zeros(1, dtype=torch.long, device=device), result.keep_visual[order],
                           torch.arange(length - tail, length, device=device)])
        if result.ignored is not None:     # per-row sets in a batch: the union is kept, the rest masked per row
            ignored = torch.cat([torch.zeros(hidden.shape[0], 1, dtype=torch.bool, device=device),
                                 result.ignored[:, order],
                                 torch.zeros(hidden.shape[0], tail, dtype=torch.bool, device=device)], dim=1)
            key_padding = ignored if key_padding is None else key_padding[:, index] | ignored
        elif key_padding is not None:
            key_padding = key_padding[:, index]
        return hidden[:, index], positions[index], key_padding
    if result.keep is None:
        return hidden, positions, key_padding
    keep = torch.zeros(length, dtype=torch.bool, device=device)
    keep[result.keep] = True
    keep |= ~layout.is_visual(positions)
    index = torch.nonzero(keep)[:, 0]
    key_padding = key_padding[:, index] if key_padding is not None else None
    return hidden[:, index], positions[index], key_padding


def run_pruned_llm(model, embeddings: torch.Tensor, layout, pruner=None, step=None,
                   key_padding: torch.Tensor | None = None, trace=None) -> torch.Tensor:
    """Final-normed hidden states at the read-out positions, (B, num_actions, hidden)."""
    llm = model.llm
    batch, length, _ = embeddings.shape
    tail = layout.seq_len - layout.patch_end           # tokens after the patches: never pruned
    positions = torch.arange(length, device=embeddings.device)   # original index of each current token
    # RoPE positions skip padding, so a padded prompt gives the same result as an unpadded one.
    rope_base = positions[None].expand(batch, -1) if key_padding is None else (~key_padding).cumsum(-1) - 1
    hidden = embeddings
    clock = StageClock(embeddings.device)
    key_bias = None
    if pruner is not None:
        clock.start()
        result = pruner.before_llm(hidden, positions, layout, step, padding=key_padding)
        if result is not None and result.rope_source is not None:
            rope_base = rope_base.gather(1, result.rope_source)
        if result is not None:
            key_bias = result.key_bias
        hidden, positions, key_padding = gather_kept(result, hidden, positions, key_padding, layout)
        clock.stop()
    attention_layers = pruner.attention_layers(len(llm.layers)) if pruner is not None else ()
    causal = model.config.causal
    lean = model.config.attn_implementation == 'sdpa'       # eager keeps transformers' own path
    cos_sin = mask = None
    decoder_layer = compiled(lean_decoder_layer) if model.compiled_layers else lean_decoder_layer
    for index, layer in enumerate(llm.layers):
        if trace is not None:
            trace.layer_tokens.append(hidden.shape[1])
        if cos_sin is None:          # first layer, or the token set changed
            cos_sin = llm.rotary_emb(hidden, position_ids=rope_base[:, positions])
            mask = model.attention_mask(key_padding, hidden.shape[1], hidden.dtype, hidden.device)
            if key_bias is not None:
                mask = key_bias[:, None, None, :].to(hidden.dtype) + (0 if mask is None else mask)
        captured, handles = {}, []
        wants_attention = index in attention_layers
        if lean:
            # Compiled, every layer hands its q/k over, so one graph serves methods that read attention rows
            # and those that do not (a live method switch does not compile again).
            handed = captured if wants_attention or model.compiled_layers else None
            hidden = decoder_layer(layer, hidden, cos_sin, mask, causal, handed)
        else:
            if wants_attention:
                attn = layer.self_attn
                handles = [attn.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__('q', o)),
                           attn.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__('k', o))]
            hidden = layer(hidden, attention_mask=mask, position_embeddings=cos_sin, is_causal=causal and mask is None)
            for handle in handles:
                handle.remove()
        if pruner is not None and index + 1 < len(llm.layers):
            clock.start()
            attention = None
            if wants_attention and lean:
                q = captured['q']
                attention = rows_attention(q[:, :, q.shape[2] - tail:], captured['k'], layer.self_attn.scaling,
                                           key_padding, causal)
            elif wants_attention:
                attention = tail_attention(layer, captured['q'], captured['k'], cos_sin, tail, key_padding, causal)
            result = pruner.after_layer(index, hidden, positions, layout, step, attention)
            if result is not None and (result.keep is not None or result.keep_visual is not None):
                if key_bias is not None:
                    raise ValueError('a pruning method set a key bias before layer 0 and cut later')
                hidden, positions, key_padding = gather_kept(result, hidden, positions, key_padding, layout)
                cos_sin = None
            clock.stop()
    if trace is not None:
        trace.kept_positions = positions
        trace.pruning_time = clock.total
    hidden = llm.norm(hidden)
    # The read-out rows are a slice of the tail, which is never pruned.
    start = hidden.shape[1] - (layout.seq_len - layout.readout_index)
    return hidden[:, start:start + layout.num_actions]
