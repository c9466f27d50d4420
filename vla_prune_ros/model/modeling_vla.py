"""The OpenVLA-OFT-family model, readable top to bottom.

    images ─► ViT(s) (second-to-last block) ─► projector ─┐
    proprio ─► proprio projector ─────────────────────────┤
    instruction ─► token embeddings ──────────────────────┼─► Llama layers (non-causal) ─► action head ─► chunk
    56 zero action placeholders + </s> ───────────────────┘

The LLM runs layer by layer over ``llm.layers`` so that a pruning method can drop tokens
before any layer. Kept tokens keep their original position ids; RoPE and the mask are
recomputed for the shorter sequence. Nothing in ``transformers`` is patched: bidirectional
attention is requested per call (``is_causal=False`` with no mask, or our own padding mask).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import (Dinov2WithRegistersConfig, Dinov2WithRegistersModel, LlamaConfig, LlamaModel,
                          SiglipVisionConfig, SiglipVisionModel)

from .configuration_vla import BackboneConfig, VLAConfig
from .pruned_llm import StageClock, compiled, run_pruned_llm


# ----------------------------------------------------------------------------- token layout

@dataclass(frozen=True)
class TokenLayout:
    """Where each kind of token sits in the full (unpruned) sequence.

    ``[BOS][patches cam0][patches cam1]...[proprio][prompt text ... pads][readout][placeholders][</s>]``
    """
    num_cameras: int
    patches_per_camera: int
    has_proprio: bool
    prompt_len: int          # tokens between proprio and the readout token (text + pads)
    num_actions: int

    bos: int = 0

    @property
    def patch_start(self) -> int:
        return 1

    @property
    def num_patches(self) -> int:
        return self.num_cameras * self.patches_per_camera

    @property
    def patch_end(self) -> int:
        return self.patch_start + self.num_patches

    def camera_range(self, camera: int) -> range:
        start = self.patch_start + camera * self.patches_per_camera
        return range(start, start + self.patches_per_camera)

    @property
    def proprio_index(self) -> int | None:
        return self.patch_end if self.has_proprio else None

    @property
    def prompt_start(self) -> int:
        return self.patch_end + int(self.has_proprio)

    @property
    def readout_index(self) -> int:
        """The appended readout token ('▁' for Llama); action read-out starts here."""
        return self.prompt_start + self.prompt_len

    @property
    def action_start(self) -> int:
        return self.readout_index + 1

    @property
    def stop_index(self) -> int:
        return self.action_start + self.num_actions

    @property
    def seq_len(self) -> int:
        return self.stop_index + 1

    @property
    def readout_positions(self) -> range:
        # Next-token alignment used in OFT training: shifted one earlier than the placeholders.
        return range(self.readout_index, self.readout_index + self.num_actions)

    def is_visual(self, positions: torch.Tensor) -> torch.Tensor:
        return (positions >= self.patch_start) & (positions < self.patch_end)

    def camera_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Camera index of each visual position (undefined for non-visual ones)."""
        return (positions - self.patch_start) // self.patches_per_camera


# ----------------------------------------------------------------------------- vision

class ViTFeatures(nn.Module):
    """One ViT built from a ``transformers`` config; returns patch tokens of its second-to-last block."""

    def __init__(self, backbone: BackboneConfig, image_size: int, patch_size: int, attn_implementation: str,
                 film_dim: int = 0):
        super().__init__()
        self.type = backbone.type
        common = dict(hidden_size=backbone.hidden_size, num_hidden_layers=backbone.num_hidden_layers,
                      num_attention_heads=backbone.num_attention_heads, image_size=image_size,
                      patch_size=patch_size, num_channels=3)
        if backbone.type == 'siglip':
            # Exact GELU as timm's SigLIP that OFT runs (transformers defaults to the tanh approximation).
            config = SiglipVisionConfig(intermediate_size=backbone.intermediate_size, vision_use_head=False,
                                        hidden_act='gelu', **common)
            config._attn_implementation = attn_implementation
            model = SiglipVisionModel(config)
            vision_model = getattr(model, 'vision_model', model)   # flattened in transformers 5
            self.embeddings, self.blocks = vision_model.embeddings, vision_model.encoder.layers
            self.num_prefix_tokens = 0
            self.lean = attn_implementation == 'sdpa'
        else:
            ratio = backbone.intermediate_size // backbone.hidden_size
            config = Dinov2WithRegistersConfig(mlp_ratio=ratio, num_register_tokens=backbone.num_register_tokens,
                                               layerscale_value=backbone.layerscale_value, **common)
            config._attn_implementation = attn_implementation
            vision_model = Dinov2WithRegistersModel(config)
            self.embeddings, self.blocks = vision_model.embeddings, vision_model.encoder.layer
            self.num_prefix_tokens = 1 + backbone.num_register_tokens   # CLS + registers
            self.lean = False
        # FiLM (OFT+): per used block, the language embedding -> (gamma, beta). Zero-initialised, so a
        # new FiLM model starts as the plain ViT.
        self.film = None
        if film_dim:
            self.film = nn.ModuleList([nn.Linear(film_dim, 2 * backbone.hidden_size)
                                       for _ in range(backbone.num_hidden_layers - 1)])
            for layer in self.film:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, pixel_values: torch.Tensor, language: torch.Tensor | None = None,
                compiled_layers: bool = False) -> torch.Tensor:
        hidden = self.embeddings(pixel_values)
        block_function = compiled(lean_siglip_block) if compiled_layers else lean_siglip_block
        for i, block in enumerate(self.blocks[:-1]):   # OFT reads the second-to-last block (timm n = depth - 2)
            if self.lean:
                hidden = block_function(block, hidden)
            else:
                hidden = block(hidden, attention_mask=None)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            if self.film is not None:
                gamma, beta = self.film[i](language).to(hidden.dtype).unsqueeze(1).chunk(2, dim=-1)
                hidden = hidden * (1 + gamma) + beta
        return hidden[:, self.num_prefix_tokens:]


def lean_siglip_block(block, hidden: torch.Tensor) -> torch.Tensor:
    """``SiglipEncoderLayer.forward`` with sdpa and no mask, the same ops in the same order
    (bit-identical), without transformers' per-call dispatch: a small ViT is mostly per-op overhead."""
    attn, mlp = block.self_attn, block.mlp
    batch, length, _ = hidden.shape
    normed = block.layer_norm1(hidden)
    shape = (batch, length, -1, attn.head_dim)
    q, k, v = (projection(normed).view(shape).transpose(1, 2) for projection in (attn.q_proj, attn.k_proj, attn.v_proj))
    out = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=attn.dropout if attn.training else 0.0,
                                                     scale=attn.scale)
    hidden = hidden + attn.out_proj(out.transpose(1, 2).reshape(batch, length, -1))
    return hidden + mlp.fc2(mlp.activation_fn(mlp.fc1(block.layer_norm2(hidden))))


class Projector(nn.Module):
    """Vision features -> LLM width. Fused backbones use OFT's 3-layer GELU MLP, a single ViT a 2-layer one."""

    def __init__(self, vision_dim: int, llm_dim: int, fused: bool):
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.fc2(self.act(self.fc1(features)))
        return self.fc3(self.act(hidden)) if self.fused else hidden


class ProprioProjector(nn.Module):
    def __init__(self, proprio_dim: int, llm_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.act_fn1 = nn.GELU()
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn1(self.fc1(proprio)))


# ----------------------------------------------------------------------------- action head

class ResidualBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList([ResidualBlock(hidden_dim) for _ in range(num_blocks)])
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """Decodes all chunk steps in parallel: per step, action_dim hidden states -> action_dim values."""

    def __init__(self, llm_dim: int, action_dim: int, num_blocks: int):
        super().__init__()
        self.action_dim = action_dim
        self.model = MLPResNet(num_blocks, action_dim * llm_dim, llm_dim, action_dim)

    def forward(self, readout_hidden: torch.Tensor) -> torch.Tensor:
        batch, num_actions, dim = readout_hidden.shape
        per_step = readout_hidden.reshape(batch, num_actions // self.action_dim, self.action_dim * dim)
        return self.model(per_step)


# ----------------------------------------------------------------------------- the model

@dataclass
class ForwardTrace:
    """What one forward did: token counts per layer, named pruning stages and timings (seconds)."""
    layer_tokens: list[int] = field(default_factory=list)
    stages: list[tuple[str, int]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    kept_positions: torch.Tensor | None = None    # original positions entering the last layer
    pruning_time: float = 0.0                     # seconds spent in pruning code (decisions + gathers)


class VLAModel(nn.Module):
    def __init__(self, config: VLAConfig):
        super().__init__()
        self.config = config
        vision = config.vision
        self.vision_backbones = nn.ModuleList([
            ViTFeatures(b, vision.image_size, vision.patch_size, config.attn_implementation,
                        film_dim=config.llm['hidden_size'] if vision.film else 0)
            for b in vision.backbones])
        llm_config = LlamaConfig(**config.llm)
        llm_config._attn_implementation = config.attn_implementation
        self.llm = LlamaModel(llm_config)
        hidden = llm_config.hidden_size
        self.projector = Projector(vision.feature_dim, hidden, fused=len(vision.backbones) == 2)
        self.proprio_projector = ProprioProjector(config.proprio_dim, hidden) if config.proprio_dim else None
        self.action_head = L1RegressionActionHead(hidden, config.action_dim, config.head_num_blocks)
        self.compiled_layers = False

    def use_compiled_layers(self, enabled: bool = True) -> None:
        """Run the lean (sdpa) LLM and SigLIP layers through ``torch.compile`` (``pruned_llm.compiled``).
        The first calls compile (tens of seconds on a CPU; it needs a C++ compiler there); the eager
        path (``attn_implementation='eager'``) and DINOv2 blocks are never compiled."""
        self.compiled_layers = enabled

    # --- pieces ---------------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        return self.llm.config.hidden_size

    def layout(self, prompt_len: int) -> TokenLayout:
        cfg = self.config
        return TokenLayout(cfg.num_cameras, cfg.vision.patches_per_image, cfg.proprio_dim > 0, prompt_len,
                           cfg.num_actions)

    def language_embedding(self, prompt_ids: torch.Tensor, prompt_padding: torch.Tensor | None = None) -> torch.Tensor:
        """(B, llm_dim): the mean input embedding of the prompt's non-padding tokens (FiLM's input)."""
        embeddings = self.llm.embed_tokens(prompt_ids).float()
        keep = torch.ones(prompt_ids.shape, device=prompt_ids.device) if prompt_padding is None else \
            (~prompt_padding).float()
        return (embeddings * keep.unsqueeze(-1)).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)

    def encode_images(self, pixel_values: torch.Tensor, prompt_ids: torch.Tensor | None = None,
                      prompt_padding: torch.Tensor | None = None) -> torch.Tensor:
        """(B, cameras * backbones * 3, S, S) normalised pixels -> (B, cameras * patches, llm_dim);
        with ``vision.film`` the prompt (as ``forward`` takes it) conditions the ViT, so it is required."""
        batch = pixel_values.shape[0]
        per_camera = 3 * len(self.vision_backbones)
        cameras = pixel_values.shape[1] // per_camera
        language = None
        if self.config.vision.film:
            if prompt_ids is None:
                raise ValueError('this model has FiLM (vision.film): encode_images needs the prompt ids')
            language = self.language_embedding(prompt_ids, prompt_padding).repeat_interleave(cameras, dim=0)
        # Run every camera through the ViTs as one batch.
        stacked = pixel_values.reshape(batch * cameras, per_camera, *pixel_values.shape[2:])
        features = torch.cat([vit(stacked[:, 3 * i:3 * i + 3], language, self.compiled_layers)
                              for i, vit in enumerate(self.vision_backbones)], dim=-1)
        features = features.reshape(batch, cameras * features.shape[1], features.shape[2])
        return self.projector(features)

    def embed_sequence(self, patch_embeddings: torch.Tensor, proprio: torch.Tensor | None,
                       prompt_ids: torch.Tensor) -> torch.Tensor:
        """Assemble ``[BOS, patches, proprio, prompt + readout, zero placeholders, </s>]``.

        ``prompt_ids`` (B, prompt_len + 1) are the ids after BOS, ending with the readout token.
        """
        cfg, embed = self.config, self.llm.embed_tokens
        batch = patch_embeddings.shape[0]
        device, dtype = patch_embeddings.device, patch_embeddings.dtype
        bos = embed(torch.full((batch, 1), cfg.bos_token_id, device=device))
        stop = embed(torch.full((batch, 1), cfg.eos_token_id, device=device))
        parts = [bos.to(dtype), patch_embeddings]
        if self.proprio_projector is not None:
            parts.append(self.proprio_projector(proprio.to(dtype)).unsqueeze(1))
        parts += [embed(prompt_ids).to(dtype), torch.zeros(batch, cfg.num_actions, self.hidden_size,
                                                          device=device, dtype=dtype), stop.to(dtype)]
        return torch.cat(parts, dim=1)

    def attention_mask(self, key_padding: torch.Tensor | None, length: int, dtype: torch.dtype,
                       device: torch.device) -> torch.Tensor | None:
        """Additive (B, 1, L, L) mask, or None for full bidirectional attention with no padding.

        Non-causal (OFT): every query sees every non-padding key, i.e. the last row of a
        causal mask repeated for all rows, as OFT's fine-tuning did.
        """
        if key_padding is None and not self.config.causal:
            return None
        blocked = torch.zeros(1, 1, length, length, dtype=torch.bool, device=device)
        if self.config.causal:
            blocked = blocked | torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
        if key_padding is not None:
            blocked = blocked | key_padding[:, None, None, :]
        return torch.zeros(blocked.shape, dtype=dtype, device=device).masked_fill(blocked, torch.finfo(dtype).min)

    # --- the forward pass -----------------------------------------------------

    def run_llm(self, embeddings: torch.Tensor, layout: TokenLayout, pruner=None, step=None,
                key_padding: torch.Tensor | None = None, trace: ForwardTrace | None = None) -> torch.Tensor:
        """Run the Llama layers one by one; returns final-normed hidden states at the read-out positions.

        ``pruner`` (see ``vla_prune_ros.pruning.base``) may shrink the token set before layer 0
        and after any layer; ``step`` carries its per-inference inputs. See ``pruned_llm``.
        """
        return run_pruned_llm(self, embeddings, layout, pruner, step, key_padding, trace)

    def forward(self, pixel_values: torch.Tensor, proprio: torch.Tensor | None, prompt_ids: torch.Tensor,
                prompt_padding: torch.Tensor | None = None, pruner=None, step=None,
                trace: ForwardTrace | None = None, return_readout: bool = False):
        """Normalised action chunk (B, chunk_len, action_dim); with ``return_readout`` also the
        read-out hidden states (B, chunk_len * action_dim, hidden) the head decoded (for training-only
        auxiliary heads).

        ``prompt_ids`` (B, prompt_len + 1): ids after BOS, readout token last. ``prompt_padding``
        (B, prompt_len + 1) is True at padding ids (training batches with prompts of mixed length).
        """
        layout = self.layout(prompt_ids.shape[1] - 1)
        clock = _Clock(pixel_values.device, trace)
        patches = self.encode_images(pixel_values, prompt_ids, prompt_padding)
        clock.lap('vision')
        embeddings = self.embed_sequence(patches, proprio, prompt_ids)
        key_padding = None
        if prompt_padding is not None and bool(prompt_padding.any()):
            key_padding = torch.zeros(embeddings.shape[:2], dtype=torch.bool, device=embeddings.device)
            key_padding[:, layout.prompt_start:layout.readout_index + 1] = prompt_padding
        readout = self.run_llm(embeddings, layout, pruner, step, key_padding, trace)
        clock.lap('llm')
        actions = self.action_head(readout)
        clock.lap('head')
        clock.finish()
        return (actions, readout) if return_readout else actions


class _Clock:
    """Laps of the forward's stages (vision, llm, head): each lap is its own ``StageClock`` interval,
    so on CUDA they are events read once after the head, never a sync between stages."""

    def __init__(self, device: torch.device, trace: ForwardTrace | None):
        self.device, self.trace = device, trace
        self.clocks: dict[str, StageClock] = {}
        self.current: StageClock | None = None
        if trace is not None:
            self._begin()

    def _begin(self) -> None:
        self.current = StageClock(self.device)
        self.current.start()

    def lap(self, name: str) -> None:
        if self.trace is None:
            return
        self.current.stop()
        self.clocks[name] = self.current
        self._begin()

    def finish(self) -> None:
        if self.trace is not None:
            self.trace.timings.update({name: clock.total for name, clock in self.clocks.items()})


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
