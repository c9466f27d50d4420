"""The model core against independent references: plain ``LlamaModel`` forwards, hand-computed
(un)normalisation, TF crop_and_resize pixels, and the OFT token layout."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaModel

from model_fixtures import INSTRUCTIONS, FixedKeep, example_inputs, tiny_config, tiny_model_and_tokenizer
from vla_prune_ros.model import ConfigError, ForwardTrace, VLAConfig, VLAModel
from vla_prune_ros.model.processing import (normalize_actions, normalize_proprio, pad_prompts, prepare_image,
                                            prompt_ids, unnormalize_actions)
from vla_prune_ros.model.tokenizer import BOS_ID, EOS_ID, READOUT_ID, UNK_ID

ATOL = 1e-5


def reference_llama(model: VLAModel, num_layers: int | None = None, first_layer: int = 0) -> LlamaModel:
    """A stock eager LlamaModel holding (a slice of) the model's LLM layers."""
    config = LlamaConfig(**{**model.config.llm, 'num_hidden_layers': num_layers or len(model.llm.layers)})
    config._attn_implementation = 'eager'
    reference = LlamaModel(config).eval()
    state = {}
    for name, tensor in model.llm.state_dict().items():
        if name.startswith('layers.'):
            index, rest = name.split('.', 2)[1:]
            if int(index) < first_layer:
                continue
            name = f'layers.{int(index) - first_layer}.{rest}'
        state[name] = tensor
    reference.load_state_dict(state, strict=True)
    return reference


def bidirectional(length: int) -> torch.Tensor:
    return torch.zeros(1, 1, length, length)


def embeddings_and_layout(model, tokenizer, instruction=INSTRUCTIONS[0], seed=0):
    pixels, proprio, ids = example_inputs(model, tokenizer, instruction, seed)
    embeddings = model.embed_sequence(model.encode_images(pixels), proprio, ids)
    return embeddings, model.layout(ids.shape[1] - 1)


# ----------------------------------------------------------------------------- normalisation

def test_unnormalize_actions_hand_computed():
    config = tiny_config(action_norm=dict(q01=[-2, 0, 1, -1, 0, 0, 0], q99=[2, 10, 3, 1, 1, 1, 1],
                                          mask=[True] * 6 + [False]))
    normalized = np.array([[0.5, -1.0, 1.0, 0.0, -0.5, 0.25, 0.7],
                           [-1.0, 1.0, 0.0, 0.5, 1.0, -1.0, -0.3]])
    # a = 0.5 (a_hat + 1)(q99 - q01) + q01; the gripper (mask False) passes through unchanged.
    expected = np.array([[1.0, 0.0, 3.0, 0.0, 0.25, 0.625, 0.7],
                         [-2.0, 10.0, 2.0, 0.5, 1.0, 0.0, -0.3]])
    actions = unnormalize_actions(normalized, config)
    np.testing.assert_allclose(actions, expected, atol=1e-7)
    np.testing.assert_allclose(normalize_actions(actions, config), normalized, atol=1e-7)


def test_normalize_proprio_hand_computed():
    config = tiny_config(proprio_norm=dict(q01=[0, -1, 0, 0, 10, 0, 0, 0], q99=[2, 1, 4, 1, 20, 1, 1, 1],
                                           mask=[True] * 7 + [False]))
    proprio = np.array([1.0, 0.5, 5.0, -3.0, 12.5, 0.0, 1.0, 0.3])
    expected = [0.0, 0.5, 1.0, -1.0, -0.5, -1.0, 1.0, 0.3]    # 5.0 and -3.0 clip to +-1
    np.testing.assert_allclose(normalize_proprio(proprio, config), expected, atol=1e-7)
    # As OFT's inference, dims the mask leaves alone are still clipped to [-1, 1].
    assert normalize_proprio(np.array([1.0] * 7 + [4.0]), config)[7] == 1.0
    no_mask = tiny_config(proprio_norm=dict(q01=[0] * 8, q99=[2] * 8))
    np.testing.assert_allclose(normalize_proprio(np.full(8, 1.5), no_mask), np.full(8, 0.5), atol=1e-7)


# ----------------------------------------------------------------------------- inputs

def test_prompt_ids_end_with_readout_and_have_no_bos_or_eos():
    model, tokenizer = tiny_model_and_tokenizer()
    ids = prompt_ids(tokenizer, '  Touch the RED cube ', model.config)
    assert ids[-1] == READOUT_ID and BOS_ID not in ids and EOS_ID not in ids and UNK_ID not in ids
    assert tokenizer.convert_ids_to_tokens(ids[:-1]) == [
        'in', ':', 'what', 'action', 'should', 'the', 'robot', 'take', 'to', 'touch', 'the', 'red', 'cube', '?',
        'out', ':']


def test_center_crop_matches_tf_crop_and_resize():
    # A horizontal ramp: bilinear sampling is exact on it, so the values follow from the sample positions alone.
    # Samples sit at x = (off + j * sqrt(0.9) / 223) * 223 with off = (1 - sqrt(0.9)) / 2, and uint8 = floor(v * 255.5).
    ramp = np.broadcast_to(np.arange(224, dtype=np.uint8)[None, :, None], (224, 224, 3)).copy()
    out = prepare_image(ramp, 224, center_crop=True)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert (out[:, 0] == 5).all() and (out[:, 111] == 111).all() and (out[:, 223] == 217).all()

    # A random image: bilinear interpolation by hand at a few pixels.
    image = np.random.default_rng(3).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    out = prepare_image(image, 224, center_crop=True)
    scale = math.sqrt(0.9)
    offset = (1 - scale) / 2
    unit = image.astype(np.float64) / 255
    for i, j in [(0, 0), (17, 200), (100, 37), (223, 223)]:
        y, x = offset * 223 + i * scale, offset * 223 + j * scale
        y0, x0 = int(y), int(x)
        wy, wx = y - y0, x - x0
        value = ((1 - wy) * ((1 - wx) * unit[y0, x0] + wx * unit[y0, x0 + 1])
                 + wy * ((1 - wx) * unit[y0 + 1, x0] + wx * unit[y0 + 1, x0 + 1]))
        np.testing.assert_array_equal(out[i, j], np.floor(np.clip(value, 0, 1) * 255.5).astype(np.uint8))

    # Other sizes are resized first; without the crop a right-sized frame is untouched.
    assert prepare_image(image[:128, :160], 224, True).shape == (224, 224, 3)
    np.testing.assert_array_equal(prepare_image(image, 224, center_crop=False), image)


# ----------------------------------------------------------------------------- the LLM loop

def test_unpruned_loop_equals_llama_forward_bidirectional_and_causal():
    model, tokenizer = tiny_model_and_tokenizer()
    embeddings, layout = embeddings_and_layout(model, tokenizer)
    reference = reference_llama(model)
    readout = list(layout.readout_positions)
    with torch.no_grad():
        ours = model.run_llm(embeddings, layout)
        expected = reference(inputs_embeds=embeddings,
                             attention_mask=bidirectional(layout.seq_len)).last_hidden_state[:, readout]
        torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)

        model.config.causal = True
        ours_causal = model.run_llm(embeddings, layout)
        expected_causal = reference(inputs_embeds=embeddings).last_hidden_state[:, readout]
        torch.testing.assert_close(ours_causal, expected_causal, atol=ATOL, rtol=0)
    # The switch really changes the computation.
    assert (ours - ours_causal).abs().max() > 1e-2


def test_pruning_before_llm_keeps_original_positions():
    model, tokenizer = tiny_model_and_tokenizer()
    embeddings, layout = embeddings_and_layout(model, tokenizer)
    kept_visual = [1, 2, 7, 16, 20, 31]
    kept = sorted(set(kept_visual) | set(range(layout.patch_end, layout.seq_len)) | {0})
    trace = ForwardTrace()
    with torch.no_grad():
        ours = model.run_llm(embeddings, layout, pruner=FixedKeep(before_llm=kept_visual), trace=trace)
        reference = reference_llama(model)
        short = embeddings[:, kept]
        rows = [kept.index(p) for p in layout.readout_positions]
        expected = reference(inputs_embeds=short, position_ids=torch.tensor([kept]),
                             attention_mask=bidirectional(len(kept))).last_hidden_state[:, rows]
        renumbered = reference(inputs_embeds=short, attention_mask=bidirectional(len(kept))).last_hidden_state[:, rows]
    assert trace.layer_tokens == [len(kept)] * 2
    assert trace.kept_positions.tolist() == kept
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)
    assert (ours - renumbered).abs().max() > 1e-3      # positions 0..n-1 would be a different model


def test_pruning_after_a_layer_keeps_original_positions():
    model, tokenizer = tiny_model_and_tokenizer(llm=dict(num_hidden_layers=3))
    embeddings, layout = embeddings_and_layout(model, tokenizer)
    kept_visual = [3, 4, 5, 18, 29]
    kept = sorted(set(kept_visual) | set(range(layout.patch_end, layout.seq_len)) | {0})
    trace = ForwardTrace()
    with torch.no_grad():
        ours = model.run_llm(embeddings, layout, pruner=FixedKeep(after={0: kept_visual}), trace=trace)
        full = reference_llama(model)(inputs_embeds=embeddings, attention_mask=bidirectional(layout.seq_len),
                                      output_hidden_states=True)
        after_layer0 = full.hidden_states[1]
        tail = reference_llama(model, num_layers=2, first_layer=1)
        rows = [kept.index(p) for p in layout.readout_positions]
        expected = tail(inputs_embeds=after_layer0[:, kept], position_ids=torch.tensor([kept]),
                        attention_mask=bidirectional(len(kept))).last_hidden_state[:, rows]
    assert trace.layer_tokens == [layout.seq_len, len(kept), len(kept)]
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)


def test_non_visual_tokens_are_never_dropped():
    model, tokenizer = tiny_model_and_tokenizer()
    embeddings, layout = embeddings_and_layout(model, tokenizer)
    trace = ForwardTrace()
    with torch.no_grad():
        model.run_llm(embeddings, layout, pruner=FixedKeep(before_llm=[]), trace=trace)
    assert trace.kept_positions.tolist() == [0] + list(range(layout.patch_end, layout.seq_len))


def test_full_forward_follows_the_oft_sequence_layout():
    """[BOS, patches, proprio, prompt + readout, zero placeholders, </s>] with read-out from the readout token."""
    model, tokenizer = tiny_model_and_tokenizer()
    pixels, proprio, ids = example_inputs(model, tokenizer)
    config = model.config
    with torch.no_grad():
        embed = model.llm.embed_tokens
        features = []
        for camera in range(config.num_cameras):
            views = pixels[:, 6 * camera:6 * camera + 6]
            dino, siglip = model.vision_backbones
            features.append(torch.cat([dino(views[:, :3]), siglip(views[:, 3:])], dim=-1))
        patches = model.projector(torch.cat(features, dim=1))
        proprio_token = model.proprio_projector(proprio)[:, None]
        sequence = torch.cat([embed(torch.tensor([[config.bos_token_id]])), patches, proprio_token, embed(ids),
                              torch.zeros(1, config.num_actions, 32), embed(torch.tensor([[config.eos_token_id]]))],
                             dim=1)
        hidden = reference_llama(model)(inputs_embeds=sequence,
                                        attention_mask=bidirectional(sequence.shape[1])).last_hidden_state
        readout = 1 + 2 * 16 + 1 + ids.shape[1] - 1          # the appended readout token's index
        steps = hidden[:, readout:readout + 56].reshape(1, 8, 7 * 32)
        expected = model.action_head.model(steps)
        actions = model(pixels, proprio, ids)
    assert actions.shape == (1, 8, 7)
    torch.testing.assert_close(actions, expected, atol=ATOL, rtol=0)


def test_vision_reads_the_second_to_last_block():
    model, tokenizer = tiny_model_and_tokenizer(vision=dict(image_size=28))
    pixels, _, _ = example_inputs(model, tokenizer)
    with torch.no_grad():
        before = model.encode_images(pixels)
        for vit in model.vision_backbones:
            for p in vit.blocks[-1].parameters():
                p.add_(1.0)
        assert torch.equal(model.encode_images(pixels), before)
        for p in model.vision_backbones[1].blocks[-2].parameters():
            p.add_(0.1)
        assert (model.encode_images(pixels) - before).abs().max() > 1e-3


@pytest.mark.parametrize('training', [False, True])
def test_lean_siglip_blocks_are_bit_identical_to_transformers(training):
    """The SigLIP blocks' lean path gives transformers' outputs and gradients bit for bit."""
    model, tokenizer = tiny_model_and_tokenizer()
    pixels, _, _ = example_inputs(model, tokenizer)
    [siglip] = [vit for vit in model.vision_backbones if vit.lean]
    siglip.train(training)
    inputs = pixels[:, 3:6].repeat(2, 1, 1, 1)            # the SigLIP channels, a batch of 2
    outputs, grads = [], []
    for lean in (False, True):
        siglip.lean = lean
        out = siglip(inputs)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append([p.grad.clone() for p in siglip.parameters() if p.grad is not None])
        siglip.zero_grad()
    assert torch.equal(*outputs) and len(grads[0]) == len(grads[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_action_head_hand_computed():
    model, _ = tiny_model_and_tokenizer(head_num_blocks=3)
    head = model.action_head.model
    readout = torch.randn(2, 56, 32)
    with torch.no_grad():
        x = readout.reshape(2, 8, 7 * 32)        # chunk step t reads positions 7t .. 7t+6
        x = F.relu(F.linear(F.layer_norm(x, (224,), head.layer_norm1.weight, head.layer_norm1.bias), head.fc1.weight,
                            head.fc1.bias))
        for block in head.mlp_resnet_blocks:
            norm, linear = block.ffn[0], block.ffn[1]
            x = x + F.relu(F.linear(F.layer_norm(x, (32,), norm.weight, norm.bias), linear.weight, linear.bias))
        x = F.linear(F.layer_norm(x, (32,), head.layer_norm2.weight, head.layer_norm2.bias), head.fc2.weight,
                     head.fc2.bias)
        torch.testing.assert_close(model.action_head(readout), x, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- batches and kernels

def test_padded_batch_equals_single_samples():
    model, tokenizer = tiny_model_and_tokenizer()
    short, long = INSTRUCTIONS
    singles, pixels, proprios, id_lists = [], [], [], []
    with torch.no_grad():
        for seed, instruction in enumerate((short, long)):
            p, q, ids = example_inputs(model, tokenizer, instruction, seed)
            singles.append(model(p, q, ids))
            pixels.append(p)
            proprios.append(q)
            id_lists.append(ids[0].tolist())
        ids, padding = pad_prompts(id_lists, model.config)
        assert padding[0].any() and not padding[1].any()
        batch = model(torch.cat(pixels), torch.cat(proprios), ids, prompt_padding=padding)
    torch.testing.assert_close(batch[0], singles[0][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(batch[1], singles[1][0], atol=ATOL, rtol=0)


def test_eager_and_sdpa_agree_on_the_full_model():
    sdpa, tokenizer = tiny_model_and_tokenizer(attn_implementation='sdpa')
    eager = VLAModel(tiny_config(attn_implementation='eager')).eval()
    eager.load_state_dict(sdpa.state_dict())
    pixels, proprio, ids = example_inputs(sdpa, tokenizer)
    with torch.no_grad():
        for pruner in (None, FixedKeep(before_llm=[1, 5, 9, 30], after={0: [5, 30]})):
            torch.testing.assert_close(eager(pixels, proprio, ids, pruner=pruner),
                                       sdpa(pixels, proprio, ids, pruner=pruner), atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- config validation

@pytest.mark.parametrize('change, field', [
    (dict(action_dim=0), 'action_dim'),
    (dict(chunk_len=-1), 'chunk_len'),
    (dict(actoin_dim=7), 'actoin_dim'),
    (dict(vision=dict(image_size=50, patch_size=14)), 'vision.image_size'),
    (dict(vision=dict(backbones=[dict(type='clip')])), 'vision.backbones[].type'),
    (dict(readout_token_id=64), 'readout_token_id'),
    (dict(attn_implementation='flash'), 'attn_implementation'),
    (dict(action_norm=dict(q01=[0] * 6, q99=[1] * 6)), 'norm_stats.action'),
    (dict(camera_names=['primary', 'primary']), 'camera_names'),
])
def test_bad_config_names_the_field(change, field):
    data = {**tiny_config().to_dict(), **change}
    with pytest.raises(ConfigError) as error:
        VLAConfig.from_dict(data)
    assert str(error.value).startswith(field)


def test_film_conditions_the_vit_on_the_instruction():
    model, tokenizer = tiny_model_and_tokenizer(vision=dict(image_size=28, film=True))
    assert VLAConfig.from_dict(model.config.to_dict()).vision.film
    pixels, proprio, ids = example_inputs(model, tokenizer, INSTRUCTIONS[0])
    _, _, other_ids = example_inputs(model, tokenizer, INSTRUCTIONS[1])
    with torch.no_grad():
        with pytest.raises(ValueError, match='FiLM'):
            model.encode_images(pixels)
        # Zero-initialised FiLM is the identity: the patches are the plain ViT's.
        plain = [vit.film for vit in model.vision_backbones]
        for vit in model.vision_backbones:
            vit.film = None
        unconditioned = model.encode_images(pixels, ids)
        for vit, film in zip(model.vision_backbones, plain):
            vit.film = film
        torch.testing.assert_close(model.encode_images(pixels, ids), unconditioned, atol=0, rtol=0)
        for film in plain:
            for layer in film:
                torch.nn.init.normal_(layer.weight, std=0.5)
        # Trained FiLM: the same pixels give other patches under another instruction.
        assert (model.encode_images(pixels, ids) - model.encode_images(pixels, other_ids)).abs().max() > 1e-3
        # Padding does not enter the language embedding.
        padded = torch.cat([ids, torch.zeros_like(ids[:, :3])], dim=1)
        padding = torch.zeros_like(padded, dtype=torch.bool)
        padding[:, ids.shape[1]:] = True
        torch.testing.assert_close(model.language_embedding(padded, padding), model.language_embedding(ids))
        torch.testing.assert_close(model.encode_images(pixels, padded, padding), model.encode_images(pixels, ids))
    assert model(pixels, proprio, ids).shape == (1, 8, 7)
