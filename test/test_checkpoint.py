"""Checkpoints: our own format round trip, the published OpenVLA-OFT layout, and clear errors.

The OFT checkpoint here is tiny but in exactly the published layout: prismatic ``config.json``,
timm/prismatic tensor names (fused ``qkv``, LayerScale ``scale_factor``, SigLIP ``attn_pool``),
``action_head--100_checkpoint.pt`` with DDP ``module.`` prefixes, ``proprio_projector--100_checkpoint.pt``
and ``dataset_statistics.json``. Its vision tower is checked against a hand-written timm-style ViT.
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from model_fixtures import INSTRUCTIONS, example_inputs, tiny_config, tiny_model_and_tokenizer, tiny_tokenizer
from vla_prune_ros.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vla_prune_ros.model.checkpoint_files import is_oft_checkpoint
from vla_prune_ros.model.oft_checkpoint import load_oft_checkpoint

ATOL = 1e-5
DINO, SIGLIP, LLM, HEADS, DEPTH, PATCH, IMAGE = 32, 24, 32, 2, 3, 14, 56
GRID = IMAGE // PATCH
STATS_KEY = 'libero_spatial_no_noops'
ACTION_Q01 = [-0.9, -0.8, -0.9, -0.1, -0.2, -0.3, -1.0]
ACTION_Q99 = [0.9, 0.85, 0.95, 0.12, 0.2, 0.3, 1.0]


# ----------------------------------------------------------------------------- writing a tiny OFT checkpoint

def timm_vit(prefix: str, width: int, mlp: int, dino: bool, generator: torch.Generator) -> dict:
    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=generator) * scale

    t = {f'{prefix}.patch_embed.proj.weight': rand(width, 3, PATCH, PATCH, scale=0.05),
         f'{prefix}.patch_embed.proj.bias': rand(width),
         f'{prefix}.pos_embed': rand(1, GRID * GRID, width),        # no_embed_class: patches only
         f'{prefix}.norm.weight': rand(width), f'{prefix}.norm.bias': rand(width)}
    if dino:
        t[f'{prefix}.cls_token'] = rand(1, 1, width)
        t[f'{prefix}.reg_token'] = rand(1, 4, width)
    else:   # SigLIP's attention-pool head: present in the file, unused by OFT
        t.update({f'{prefix}.attn_pool.latent': rand(1, 1, width), f'{prefix}.attn_pool.q.weight': rand(width, width),
                  f'{prefix}.attn_pool.kv.weight': rand(2 * width, width),
                  f'{prefix}.attn_pool.mlp.fc1.weight': rand(mlp, width)})
    for block in range(DEPTH):
        b = f'{prefix}.blocks.{block}'
        t.update({f'{b}.norm1.weight': 1 + rand(width), f'{b}.norm1.bias': rand(width),
                  f'{b}.attn.qkv.weight': rand(3 * width, width), f'{b}.attn.qkv.bias': rand(3 * width),
                  f'{b}.attn.proj.weight': rand(width, width), f'{b}.attn.proj.bias': rand(width),
                  f'{b}.norm2.weight': 1 + rand(width), f'{b}.norm2.bias': rand(width),
                  f'{b}.mlp.fc1.weight': rand(mlp, width), f'{b}.mlp.fc1.bias': rand(mlp),
                  f'{b}.mlp.fc2.weight': rand(width, mlp), f'{b}.mlp.fc2.bias': rand(width)})
        if dino:   # prismatic renames timm's LayerScale gamma to scale_factor
            t[f'{b}.ls1.scale_factor'] = 0.5 + rand(width)
            t[f'{b}.ls2.scale_factor'] = 0.5 + rand(width)
    return t


def write_oft_checkpoint(directory, sharded=False, stats_keys=(STATS_KEY,), sidecar=True):
    generator = torch.Generator().manual_seed(0)
    tensors = {**timm_vit('vision_backbone.featurizer', DINO, 4 * DINO, True, generator),
               **timm_vit('vision_backbone.fused_featurizer', SIGLIP, 40, False, generator)}
    fused = DINO + SIGLIP
    for name, shape in (('fc1', (4 * fused, fused)), ('fc2', (LLM, 4 * fused)), ('fc3', (LLM, LLM))):
        tensors[f'projector.{name}.weight'] = torch.randn(*shape, generator=generator) * 0.1
        tensors[f'projector.{name}.bias'] = torch.randn(shape[0], generator=generator) * 0.1
    text_config = dict(model_type='llama', vocab_size=32064, pad_token_id=32000, hidden_size=LLM,
                       intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, torch_dtype='bfloat16')
    torch.manual_seed(1)
    llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in text_config.items() if k != 'model_type'},
                                         initializer_range=0.2))
    tensors.update({f'language_model.{name}': t for name, t in llama.state_dict().items()})
    if sharded:
        vision = {n: t for n, t in tensors.items() if not n.startswith('language_model.')}
        language = {n: t for n, t in tensors.items() if n.startswith('language_model.')}
        save_file(vision, str(directory / 'model-00001-of-00002.safetensors'))
        save_file(language, str(directory / 'model-00002-of-00002.safetensors'))
        weight_map = {**{n: 'model-00001-of-00002.safetensors' for n in vision},
                      **{n: 'model-00002-of-00002.safetensors' for n in language}}
        (directory / 'model.safetensors.index.json').write_text(json.dumps({'metadata': {}, 'weight_map': weight_map}))
    else:
        save_file(tensors, str(directory / 'model.safetensors'))

    head = {}
    for name, shape in (('layer_norm1', (7 * LLM,)), ('fc1', (LLM, 7 * LLM)), ('mlp_resnet_blocks.0.ffn.0', (LLM,)),
                        ('mlp_resnet_blocks.0.ffn.1', (LLM, LLM)), ('mlp_resnet_blocks.1.ffn.0', (LLM,)),
                        ('mlp_resnet_blocks.1.ffn.1', (LLM, LLM)), ('layer_norm2', (LLM,)), ('fc2', (7, LLM))):
        head[f'module.model.{name}.weight'] = torch.randn(*shape, generator=generator) * 0.2 + (len(shape) == 1)
        head[f'module.model.{name}.bias'] = torch.randn(shape[0], generator=generator) * 0.1
    torch.save(head, directory / 'action_head--100_checkpoint.pt')
    proprio = {'fc1.weight': torch.randn(LLM, 8, generator=generator),
               'fc1.bias': torch.randn(LLM, generator=generator),
               'fc2.weight': torch.randn(LLM, LLM, generator=generator) * 0.2,
               'fc2.bias': torch.randn(LLM, generator=generator)}
    torch.save(proprio, directory / 'proprio_projector--100_checkpoint.pt')

    stats = {}
    for index, key in enumerate(stats_keys):
        shift = 0.5 * index
        stats[key] = {'action': {'mean': [0.0] * 7, 'std': [1.0] * 7, 'q01': [q + shift for q in ACTION_Q01],
                                 'q99': [q + shift for q in ACTION_Q99], 'mask': [True] * 6 + [False]},
                      'proprio': {'q01': [-0.2] * 8, 'q99': [0.2] * 8, 'mean': [0.0] * 8},
                      'num_transitions': 1000, 'num_trajectories': 10}
    (directory / 'dataset_statistics.json').write_text(json.dumps(stats))
    config = {'architectures': ['OpenVLAForActionPrediction'], 'model_type': 'openvla',
              'vision_backbone_id': 'dinosiglip-vit-so-224px', 'llm_backbone_id': 'llama2-7b-pure',
              'arch_specifier': 'no-align+fused-gelu-mlp', 'use_fused_vision_backbone': True,
              'timm_model_ids': ['vit_large_patch14_reg4_dinov2.lvd142m', 'vit_so400m_patch14_siglip_224'],
              'timm_override_act_layers': [None, None], 'image_sizes': [IMAGE, IMAGE],
              'image_resize_strategy': 'resize-naive', 'hf_llm_id': 'meta-llama/Llama-2-7b-hf', 'llm_max_length': 2048,
              'pad_token_id': 32000, 'pad_to_multiple_of': 64, 'n_action_bins': 256, 'norm_stats': stats,
              'text_config': text_config, 'torch_dtype': 'bfloat16', 'transformers_version': '4.40.1'}
    (directory / 'config.json').write_text(json.dumps(config))
    if sidecar:   # the tiny ViTs have non-standard widths, so their head counts must be given
        (directory / 'vla_prune_ros.json').write_text(json.dumps({'vision_num_heads': [HEADS, HEADS]}))
    tiny_tokenizer(tiny_config()).save_pretrained(str(directory))
    return tensors, {k.removeprefix('module.'): v for k, v in head.items()}, proprio


def timm_reference(tensors: dict, prefix: str, pixels: torch.Tensor, dino: bool) -> torch.Tensor:
    """timm's ViT forward up to the second-to-last block, written out, on the prismatic tensors."""
    t = {name.removeprefix(prefix + '.'): value for name, value in tensors.items() if name.startswith(prefix + '.')}
    x = F.conv2d(pixels, t['patch_embed.proj.weight'], t['patch_embed.proj.bias'], stride=PATCH)
    x = x.flatten(2).transpose(1, 2) + t['pos_embed']
    batch, width = x.shape[0], x.shape[2]
    prefix_tokens = [t['cls_token'].expand(batch, -1, -1), t['reg_token'].expand(batch, -1, -1)] if dino else []
    x = torch.cat(prefix_tokens + [x], dim=1)
    for block in range(DEPTH - 1):
        b = f'blocks.{block}.'
        h = F.layer_norm(x, (width,), t[b + 'norm1.weight'], t[b + 'norm1.bias'], eps=1e-6)
        q, k, v = F.linear(h, t[b + 'attn.qkv.weight'], t[b + 'attn.qkv.bias']).reshape(
            batch, -1, 3, HEADS, width // HEADS).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (width // HEADS) ** -0.5).softmax(-1)
        h = F.linear((attention @ v).transpose(1, 2).reshape(batch, -1, width), t[b + 'attn.proj.weight'],
                     t[b + 'attn.proj.bias'])
        x = x + (h * t[b + 'ls1.scale_factor'] if dino else h)
        h = F.layer_norm(x, (width,), t[b + 'norm2.weight'], t[b + 'norm2.bias'], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, t[b + 'mlp.fc1.weight'], t[b + 'mlp.fc1.bias'])), t[b + 'mlp.fc2.weight'],
                     t[b + 'mlp.fc2.bias'])
        x = x + (h * t[b + 'ls2.scale_factor'] if dino else h)
    return x[:, 5:] if dino else x


# ----------------------------------------------------------------------------- the OFT layout

@pytest.mark.parametrize('sharded', [False, True])
def test_oft_checkpoint_loads_into_our_model(tmp_path, sharded, capfd):
    tensors, head, proprio = write_oft_checkpoint(tmp_path, sharded=sharded)
    assert is_oft_checkpoint(tmp_path)
    capfd.readouterr()
    model, tokenizer = load_checkpoint(tmp_path)
    assert capfd.readouterr() == ('', '')     # loading prints nothing
    config = model.config

    assert (config.action_dim, config.chunk_len, config.proprio_dim, config.head_num_blocks) == (7, 8, 8, 2)
    assert config.camera_names == ['primary', 'wrist'] and config.vision.image_size == IMAGE
    assert [b.type for b in config.vision.backbones] == ['dinov2_reg', 'siglip']
    assert config.vision.backbones[0].num_register_tokens == 4 and config.vision.backbones[1].intermediate_size == 40
    assert (config.pad_token_id, config.readout_token_id, config.llm['vocab_size']) == (32000, 29871, 32064)
    assert not config.causal and config.center_crop
    assert config.action_norm.q01 == ACTION_Q01 and config.action_norm.mask == [True] * 6 + [False]
    assert config.proprio_norm.q99 == [0.2] * 8 and config.proprio_norm.mask is None

    dino, siglip = model.vision_backbones
    qkv = tensors['vision_backbone.featurizer.blocks.1.attn.qkv.weight']
    attention = dino.blocks[1].attention
    assert torch.equal(attention.q_proj.weight, qkv[:DINO]) and torch.equal(attention.k_proj.weight, qkv[DINO:2 * DINO])
    assert torch.equal(attention.v_proj.weight, qkv[2 * DINO:])
    qkv_bias = tensors['vision_backbone.fused_featurizer.blocks.0.attn.qkv.bias']
    assert torch.equal(siglip.blocks[0].self_attn.v_proj.bias, qkv_bias[2 * SIGLIP:])
    assert torch.equal(dino.blocks[2].layer_scale2.lambda1,
                       tensors['vision_backbone.featurizer.blocks.2.ls2.scale_factor'])
    assert torch.equal(dino.embeddings.register_tokens, tensors['vision_backbone.featurizer.reg_token'])
    assert torch.equal(dino.embeddings.position_embeddings[:, 1:], tensors['vision_backbone.featurizer.pos_embed'])
    assert not dino.embeddings.position_embeddings[:, 0].any()    # timm folded CLS's position into cls_token
    assert torch.equal(siglip.embeddings.position_embedding.weight,
                       tensors['vision_backbone.fused_featurizer.pos_embed'][0])
    assert torch.equal(model.llm.layers[1].mlp.down_proj.weight,
                       tensors['language_model.model.layers.1.mlp.down_proj.weight'])
    assert torch.equal(model.projector.fc3.bias, tensors['projector.fc3.bias'])

    # Each ViT equals a timm-style forward on the original tensors (exact GELU, registers, LayerScale).
    pixels = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(dino(pixels), timm_reference(tensors, 'vision_backbone.featurizer', pixels, True),
                                   atol=ATOL, rtol=0)
        torch.testing.assert_close(siglip(pixels),
                                   timm_reference(tensors, 'vision_backbone.fused_featurizer', pixels, False),
                                   atol=ATOL, rtol=0)

        # The action head equals OFT's MLP-ResNet written out on the .pt weights (DDP prefix stripped).
        readout = torch.randn(1, 56, LLM)
        x = readout.reshape(1, 8, 7 * LLM)
        x = F.layer_norm(x, (7 * LLM,), head['model.layer_norm1.weight'], head['model.layer_norm1.bias'])
        x = F.relu(F.linear(x, head['model.fc1.weight'], head['model.fc1.bias']))
        for block in range(2):
            p = f'model.mlp_resnet_blocks.{block}.ffn.'
            x = x + F.relu(F.linear(F.layer_norm(x, (LLM,), head[p + '0.weight'], head[p + '0.bias']),
                                    head[p + '1.weight'], head[p + '1.bias']))
        x = F.linear(F.layer_norm(x, (LLM,), head['model.layer_norm2.weight'], head['model.layer_norm2.bias']),
                     head['model.fc2.weight'], head['model.fc2.bias'])
        torch.testing.assert_close(model.action_head(readout), x, atol=ATOL, rtol=0)
        state = torch.randn(3, 8)
        expected = F.linear(F.gelu(F.linear(state, proprio['fc1.weight'], proprio['fc1.bias'])), proprio['fc2.weight'],
                            proprio['fc2.bias'])
        torch.testing.assert_close(model.proprio_projector(state), expected, atol=ATOL, rtol=0)

        pixels, proprio_state, ids = example_inputs(model, tokenizer)
        assert ids[0, -1].item() == 29871
        actions = model(pixels, proprio_state, ids)
    assert actions.shape == (1, 8, 7) and torch.isfinite(actions).all()


def test_oft_checkpoint_options_and_dtype(tmp_path):
    write_oft_checkpoint(tmp_path, stats_keys=(STATS_KEY, 'libero_goal_no_noops'))
    with pytest.raises(CheckpointError, match=r"dataset_statistics.json: several statistics .*libero_goal_no_noops"):
        load_oft_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"unnorm_key 'bridge' not found; available: \['libero_goal"):
        load_oft_checkpoint(tmp_path, unnorm_key='bridge')
    model, _ = load_oft_checkpoint(tmp_path, unnorm_key='libero_goal_no_noops', num_cameras=1, dtype='bfloat16',
                                   attn_implementation='eager')
    assert model.config.action_norm.q01[0] == pytest.approx(ACTION_Q01[0] + 0.5)
    assert model.config.camera_names == ['primary'] and model.config.attn_implementation == 'eager'
    assert next(model.parameters()).dtype == torch.bfloat16
    (tmp_path / 'vla_prune_ros.json').write_text(json.dumps({'vision_num_heads': [HEADS, HEADS], 'chunk_len': 4,
                                                             'unnorm_key': STATS_KEY}))
    model, _ = load_oft_checkpoint(tmp_path)
    assert model.config.chunk_len == 4 and model.config.action_norm.q01 == ACTION_Q01


def test_oft_patch_positions_are_resampled_to_the_grid(tmp_path):
    write_oft_checkpoint(tmp_path)
    tensors = load_file(str(tmp_path / 'model.safetensors'))
    constant = torch.linspace(-1, 1, DINO)
    tensors['vision_backbone.featurizer.pos_embed'] = constant.expand(1, 9, DINO).clone()   # a 3 x 3 grid
    save_file(tensors, str(tmp_path / 'model.safetensors'))
    model, _ = load_checkpoint(tmp_path)
    positions = model.vision_backbones[0].embeddings.position_embeddings
    assert positions.shape == (1, 1 + GRID * GRID, DINO)
    torch.testing.assert_close(positions[0, 1:], constant.expand(GRID * GRID, DINO), atol=1e-5, rtol=0)


def _rewrite(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize('breakage, message', [
    ('no_sidecar', r"config.json: cannot tell the attention heads of 'vit_large_patch14_reg4_dinov2.lvd142m'"),
    ('no_head', r'action_head--<step>_checkpoint.pt: missing'),
    ('corrupt_head', r'action_head--100_checkpoint.pt: corrupt or unreadable'),
    ('wrong_shape', r'model.safetensors: projector.fc3.weight has shape \(32, 31\)'),
    ('wrong_vision_shape', r'model.safetensors: vision_backbone.fused_featurizer.blocks.0.mlp.fc2.weight has shape'),
    ('extra_tensor', r"model.safetensors: unexpected tensors \['vision_backbone.film"),
    ('missing_tensor', r'model.safetensors: missing tensor vision_backbone.featurizer.blocks.1.attn.qkv.weight'),
    ('missing_shard', r'model-00002-of-00002.safetensors: missing'),
    ('image_sizes', r'config.json: image_sizes: need one equal size per ViT'),
    ('bad_llm', r'config.json: bad config: llm.hidden_size: must be divisible by num_attention_heads'),
    ('sidecar_field', r"vla_prune_ros.json: chunk_size: unknown field"),
    ('no_proprio_stats', r'dataset_statistics.json: libero_spatial_no_noops.proprio: missing'),
    ('short_stats', r'dataset_statistics.json: bad config: norm_stats.action: q01/q99 need 7 values, got 6/7'),
])
def test_oft_checkpoint_errors_name_the_file(tmp_path, breakage, message):
    write_oft_checkpoint(tmp_path, sharded=breakage == 'missing_shard')
    weights = tmp_path / 'model.safetensors'
    if breakage == 'no_sidecar':
        (tmp_path / 'vla_prune_ros.json').unlink()
    elif breakage == 'no_head':
        (tmp_path / 'action_head--100_checkpoint.pt').unlink()
    elif breakage == 'corrupt_head':
        (tmp_path / 'action_head--100_checkpoint.pt').write_bytes(b'not a pickle')
    elif breakage in ('wrong_shape', 'wrong_vision_shape', 'extra_tensor', 'missing_tensor'):
        tensors = load_file(str(weights))
        if breakage == 'wrong_shape':
            tensors['projector.fc3.weight'] = torch.zeros(32, 31)
        elif breakage == 'wrong_vision_shape':
            tensors['vision_backbone.fused_featurizer.blocks.0.mlp.fc2.weight'] = torch.zeros(SIGLIP, 39)
        elif breakage == 'extra_tensor':
            tensors['vision_backbone.film_projector.weight'] = torch.zeros(3)
        else:
            del tensors['vision_backbone.featurizer.blocks.1.attn.qkv.weight']
        save_file(tensors, str(weights))
    elif breakage == 'missing_shard':
        (tmp_path / 'model-00002-of-00002.safetensors').unlink()
    elif breakage == 'image_sizes':
        _rewrite(tmp_path / 'config.json', lambda c: c.update(image_sizes=[IMAGE, 28]))
    elif breakage == 'bad_llm':
        _rewrite(tmp_path / 'config.json', lambda c: c['text_config'].update(num_attention_heads=5))
    elif breakage == 'sidecar_field':
        _rewrite(tmp_path / 'vla_prune_ros.json', lambda c: c.update(chunk_size=4))
    elif breakage == 'short_stats':
        _rewrite(tmp_path / 'dataset_statistics.json', lambda c: c[STATS_KEY]['action'].update(q01=ACTION_Q01[:6]))
    elif breakage == 'no_proprio_stats':
        _rewrite(tmp_path / 'dataset_statistics.json', lambda c: c[STATS_KEY].pop('proprio'))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path)


# ----------------------------------------------------------------------------- our own format

def test_own_format_round_trip_is_bit_identical(tmp_path):
    model, tokenizer = tiny_model_and_tokenizer(seed=5)
    save_checkpoint(model, tokenizer, tmp_path, dataset_statistics={'demo': {'action': {'q01': [0] * 7}}})
    assert not is_oft_checkpoint(tmp_path)
    loaded, loaded_tokenizer = load_checkpoint(tmp_path)
    assert loaded.config.to_dict() == model.config.to_dict()
    assert loaded_tokenizer(INSTRUCTIONS[1])['input_ids'] == tokenizer(INSTRUCTIONS[1])['input_ids']
    pixels, proprio, ids = example_inputs(model, tokenizer)
    with torch.no_grad():
        assert torch.equal(loaded(pixels, proprio, ids), model(pixels, proprio, ids))


@pytest.mark.parametrize('breakage, message', [
    ('no_config', r'config.json: missing'),
    ('config_json', r'config.json: not valid JSON'),
    ('bad_field', r'config.json: bad config: action_dim: must be a positive int'),
    ('unknown_field', r"config.json: bad config: chunk_size: unknown config field"),
    ('no_weights', r'model.safetensors: missing'),
    ('corrupt_weights', r'model.safetensors: corrupt or unreadable'),
    ('wrong_shape', r'model.safetensors: projector.fc3.weight has shape \(32, 31\), config expects \(32, 32\)'),
    ('missing_tensor', r"model.safetensors: weights do not match config.json \(missing \['action_head.model.fc2.bias'"),
    ('no_tokenizer', r'tokenizer.json: cannot load tokenizer'),
])
def test_own_format_errors_name_the_file(tmp_path, breakage, message):
    model, tokenizer = tiny_model_and_tokenizer()
    save_checkpoint(model, tokenizer, tmp_path)
    weights, config = tmp_path / 'model.safetensors', tmp_path / 'config.json'
    if breakage == 'no_config':
        config.unlink()
    elif breakage == 'config_json':
        config.write_text('{"action_dim": 7,')
    elif breakage == 'bad_field':
        _rewrite(config, lambda c: c.update(action_dim=0))
    elif breakage == 'unknown_field':
        _rewrite(config, lambda c: c.update(chunk_size=8))
    elif breakage == 'no_weights':
        weights.unlink()
    elif breakage == 'corrupt_weights':
        weights.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif breakage in ('wrong_shape', 'missing_tensor'):
        tensors = load_file(str(weights))
        if breakage == 'wrong_shape':
            tensors['projector.fc3.weight'] = torch.zeros(32, 31)
        else:
            del tensors['action_head.model.fc2.bias']
        save_file(tensors, str(weights))
    elif breakage == 'no_tokenizer':
        for path in tmp_path.glob('tokenizer*'):
            path.unlink()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path)
