"""LightVLA and LightVLA* pinned down against an independent recomputation of the scores.

    P = rmsnorm(patches)              T = rmsnorm(every non-patch token except BOS)
    Q = rmsnorm(softmax(P Tᵀ/√D) T)   S = Q Pᵀ/√D

Inference keeps the union of each row's argmax; training replaces the patches by ``S_hard @ P``
(straight-through) at a fixed length. The reference here is float64 and written from the
formulas above, not from the method's code.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaModel

from model_fixtures import INSTRUCTIONS, example_inputs, random_frames, tiny_model_and_tokenizer
from vla_prune_ros.model import ForwardTrace
from vla_prune_ros.model.checkpoint import save_checkpoint
from vla_prune_ros.model.processing import pad_prompts
from vla_prune_ros.policy import VLAPolicy
from vla_prune_ros.pruning import InferenceStep, create_method
from vla_prune_ros.pruning.lightvla import choice_counts

ATOL = 1e-5


def rmsnorm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def reference_scores(embeddings: torch.Tensor, layout, queries: torch.Tensor | None = None) -> torch.Tensor:
    """S (patches x patches) in float64; ``queries`` replaces Q (LightVLA* 'replace' mode)."""
    x = embeddings[0].detach().double()
    is_patch = torch.zeros(len(x), dtype=torch.bool)
    is_patch[layout.patch_start:layout.patch_end] = True
    is_query = ~is_patch
    is_query[layout.bos] = False             # the reference splits [BOS | patches | rest]; T is rest
    P, T = rmsnorm(x[is_patch]), rmsnorm(x[is_query])
    D = x.shape[-1]
    Q = rmsnorm(torch.softmax(P @ T.T / math.sqrt(D), dim=-1) @ T) if queries is None else rmsnorm(queries.double())
    return Q @ P.T / math.sqrt(D)


def clear_argmax(scores: torch.Tensor) -> torch.Tensor:
    """Row argmax, after checking no row is a near tie (so float32 and float64 must agree)."""
    top2 = scores.topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-4
    return scores.argmax(dim=-1)


def setup(seed=0, instruction=INSTRUCTIONS[0], **overrides):
    model, tokenizer = tiny_model_and_tokenizer(seed=seed, **overrides)
    pixels, proprio, ids = example_inputs(model, tokenizer, instruction, seed)
    with torch.no_grad():
        embeddings = model.embed_sequence(model.encode_images(pixels), proprio, ids)
    return model, (pixels, proprio, ids), embeddings, model.layout(ids.shape[1] - 1)


def infer(model, inputs, method):
    trace, step = ForwardTrace(), InferenceStep()
    with torch.no_grad():
        actions = model(*inputs, pruner=method, step=step, trace=trace)
    return actions, trace, step


def visual_kept(trace, layout) -> list[int]:
    return [p for p in trace.kept_positions.tolist() if layout.patch_start <= p < layout.patch_end]


# ----------------------------------------------------------------------------- inference

@pytest.mark.parametrize('seed, instruction', [(0, INSTRUCTIONS[0]), (1, INSTRUCTIONS[1]), (2, INSTRUCTIONS[1])])
def test_inference_keeps_the_union_of_row_argmaxes_at_their_original_positions(seed, instruction):
    model, inputs, embeddings, layout = setup(seed, instruction)
    chosen = sorted(set(clear_argmax(reference_scores(embeddings, layout)).tolist()))
    expected = [layout.patch_start + i for i in chosen]
    assert 1 <= len(expected) < 32                       # a real, variable-count cut

    actions, trace, step = infer(model, inputs, create_method('lightvla'))
    assert visual_kept(trace, layout) == expected
    non_visual = layout.seq_len - 32
    assert trace.layer_tokens == [non_visual + len(expected)] * 2
    assert step.stages == [('input', layout.seq_len), ('lightvla_select', non_visual + len(expected))]

    # Kept patches keep their original position ids: a stock LlamaModel on the kept tokens with those ids.
    kept = [0] + expected + list(range(layout.patch_end, layout.seq_len))
    config = LlamaConfig(**model.config.llm)
    config._attn_implementation = 'eager'
    reference = LlamaModel(config).eval()
    reference.load_state_dict(model.llm.state_dict())
    with torch.no_grad():
        hidden = reference(inputs_embeds=embeddings[:, kept], position_ids=torch.tensor([kept]),
                           attention_mask=torch.zeros(1, 1, len(kept), len(kept))).last_hidden_state
        rows = [kept.index(p) for p in layout.readout_positions]
        expected_actions = model.action_head(hidden[:, rows])
    torch.testing.assert_close(actions, expected_actions, atol=ATOL, rtol=0)


@pytest.mark.parametrize('count', [1, 5, 20, 32])
def test_forced_visual_keep_keeps_exactly_n_best_scored_patches(count):
    model, inputs, embeddings, layout = setup()
    best = reference_scores(embeddings, layout).max(dim=0).values      # each patch's best score as an answer
    expected = sorted(layout.patch_start + int(i) for i in best.topk(count).indices)
    _, trace, _ = infer(model, inputs, create_method('lightvla', forced_visual_keep=count))
    assert visual_kept(trace, layout) == expected


@pytest.mark.parametrize('floor', [1, 6, 32])
def test_lightvla_keeps_at_least_min_visual_tokens(floor):
    model, inputs, embeddings, layout = setup()
    scores = reference_scores(embeddings, layout)
    union = set(clear_argmax(scores).tolist())
    assert len(union) < 6                         # so floors 6 and 32 have work to do
    _, trace, _ = infer(model, inputs, create_method('lightvla', min_visual_tokens=floor))
    kept = {p - layout.patch_start for p in visual_kept(trace, layout)}
    top_up = set(scores.max(dim=0).values.topk(min(floor, 32)).indices.tolist())
    assert len(kept) >= floor and kept == (union if len(union) >= floor else union | top_up)


# ----------------------------------------------------------------------------- training

def test_training_keeps_the_length_and_replaces_patches_by_hard_selection():
    model, inputs, embeddings, layout = setup()
    is_patch = torch.zeros(layout.seq_len, dtype=torch.bool)
    is_patch[layout.patch_start:layout.patch_end] = True
    chosen = clear_argmax(reference_scores(embeddings, layout))
    method = create_method('lightvla')      # noise_scale 0: training selects exactly what inference keeps
    method.train(True)
    result = method.before_llm(embeddings, torch.arange(layout.seq_len), layout, None)
    assert result.keep is None and result.hidden.shape == embeddings.shape
    patches = embeddings[0, is_patch]
    torch.testing.assert_close(result.hidden[0, is_patch], patches[chosen], atol=1e-6, rtol=0)   # one-hot rows
    assert torch.equal(result.hidden[0, ~is_patch], embeddings[0, ~is_patch])
    # each row carries the position id of the patch it selected, as at inference
    assert torch.equal(result.rope_source[0, is_patch], torch.arange(layout.seq_len)[is_patch][chosen])

    trace = ForwardTrace()
    with torch.no_grad():
        model.run_llm(embeddings, layout, pruner=method, trace=trace)
    assert trace.layer_tokens == [layout.seq_len] * 2

    method.train(False)
    _, trace, _ = infer(model, inputs, method)
    assert visual_kept(trace, layout) == sorted(layout.patch_start + int(i) for i in set(chosen.tolist()))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_training_without_noise_computes_what_inference_computes(seed):
    """A patch chosen m times counts once in training (-log m per copy as a key), so the training forward is
    the inference forward; with every repeat counted (the released code) it is not."""
    model, inputs, embeddings, layout = setup(seed, INSTRUCTIONS[seed % 2])
    chosen = clear_argmax(reference_scores(embeddings, layout))
    assert len(set(chosen.tolist())) < len(chosen)          # some patch is chosen more than once
    inferred, _, _ = infer(model, inputs, create_method('lightvla'))
    outputs = {}
    for as_inferred in (True, False):
        method = create_method('lightvla', train_as_inferred=as_inferred)
        method.train(True)
        with torch.no_grad():
            outputs[as_inferred] = model(*inputs, pruner=method)
    torch.testing.assert_close(outputs[True], inferred, atol=ATOL, rtol=0)
    assert (outputs[False] - inferred).abs().max() > 1e-3


def test_choice_counts_count_each_rows_choice_within_its_sample():
    chosen = torch.tensor([[3, 1, 3, 3, 0], [2, 2, 2, 2, 2]])
    assert choice_counts(chosen).tolist() == [[3, 1, 3, 3, 1], [5, 5, 5, 5, 5]]


@pytest.mark.parametrize('noise', ['uniform', 'gumbel'])
def test_gradients_flow_through_the_straight_through_selection(noise):
    model, inputs, embeddings, layout = setup()
    method = create_method('lightvla', noise=noise, noise_scale=0.5)
    method.train(True)
    target = torch.zeros(1, 8, 7)

    # To the projector and the ViTs, from an L1 loss on the actions.
    loss = torch.nn.functional.l1_loss(model(*inputs, pruner=method), target)
    loss.backward()
    assert model.projector.fc1.weight.grad.abs().sum() > 0
    assert next(model.vision_backbones[1].blocks[0].parameters()).grad.abs().sum() > 0

    # A patch that no row selects reaches the loss only through the softmax of the straight-through term.
    method.update_options(noise_scale=0.0)
    leaf = embeddings.clone().requires_grad_(True)
    readout = model.run_llm(leaf, layout, pruner=method)
    torch.nn.functional.l1_loss(model.action_head(readout), target).backward()
    chosen = set(clear_argmax(reference_scores(embeddings, layout)).tolist())
    unchosen = [i for i in range(32) if i not in chosen]
    patch_grads = leaf.grad[0, layout.patch_start:layout.patch_end]
    assert unchosen and (patch_grads[unchosen].abs().sum(dim=-1) > 0).all()


def basis_selection_draws(noise: str, scale: float, row: list[float], draws: int = 1000) -> np.ndarray:
    """Patches are basis vectors, so each selected row shows which patch it chose; returns choice counts."""
    method = create_method('lightvla', noise=noise, noise_scale=scale)
    method.train(True)
    n = len(row)
    hidden = torch.zeros(draws, n + 2, n)
    hidden[:, 1:n + 1] = torch.eye(n)
    is_patch = torch.zeros(n + 2, dtype=torch.bool)
    is_patch[1:n + 1] = True
    scores = torch.tensor(row).expand(draws, n, n).clone()
    torch.manual_seed(0)
    layout = SimpleNamespace(patch_start=1, patch_end=n + 1)
    selected = method._soft_select(hidden, scores, layout)[0][:, is_patch].reshape(-1, n)
    torch.testing.assert_close(selected, torch.eye(n)[selected.argmax(-1)], atol=1e-6, rtol=0)   # one-hot rows
    return np.bincount(selected.argmax(-1).numpy(), minlength=n) / len(selected)


@pytest.mark.parametrize('noise', ['uniform', 'gumbel'])
def test_zero_noise_selects_the_argmax(noise):
    np.testing.assert_array_equal(basis_selection_draws(noise, 0.0, [0.0, 0.5, 2.0, 2.3], draws=10),
                                  [0, 0, 0, 1])


def test_gumbel_noise_samples_the_softmax():
    row = [0.0, 0.5, 1.0, 1.5]
    frequencies = basis_selection_draws('gumbel', 1.0, row)
    np.testing.assert_allclose(frequencies, torch.softmax(torch.tensor(row), 0).numpy(), atol=0.03)


def test_uniform_noise_only_reaches_patches_within_its_scale():
    # score + scale * U[0, 1): patch 1 (2.3 - 0.5 > 1) can never win; patch 2 beats patch 3 when
    # U2 - U3 > 0.3, with probability 0.7² / 2 = 0.245.
    frequencies = basis_selection_draws('uniform', 1.0, [0.0, 0.5, 2.0, 2.3])
    assert frequencies[0] == frequencies[1] == 0
    assert abs(frequencies[2] - 0.245) < 0.03


def test_noise_scale_is_annealed_through_set_noise_scale():
    method = create_method('lightvla')
    method.set_noise_scale(0.25)
    assert method.options.noise_scale == 0.25
    with pytest.raises(ValueError, match='noise_scale'):
        method.set_noise_scale(-1.0)


# ----------------------------------------------------------------------------- LightVLA*

def test_star_with_zero_queries_in_add_mode_is_lightvla():
    model, inputs, embeddings, layout = setup(seed=1, instruction=INSTRUCTIONS[1])
    plain, star = create_method('lightvla'), create_method('lightvla_star')
    _, plain_trace, _ = infer(model, inputs, plain)
    _, star_trace, _ = infer(model, inputs, star)
    assert torch.equal(star_trace.kept_positions, plain_trace.kept_positions)
    assert torch.count_nonzero(star.trainable_module().queries) == 0
    positions = torch.arange(layout.seq_len)
    for method in (plain, star):
        method.train(True)
    torch.testing.assert_close(star.before_llm(embeddings, positions, layout, None).hidden,
                               plain.before_llm(embeddings, positions, layout, None).hidden, atol=1e-6, rtol=0)


@pytest.mark.parametrize('query_mode', ['add', 'replace'])
def test_star_queries_receive_gradients(query_mode):
    model, inputs, _, _ = setup()
    star = create_method('lightvla_star', query_mode=query_mode)
    star.train(True)
    queries = star.ensure_queries(32, model.hidden_size).queries
    if query_mode == 'replace':
        torch.nn.init.normal_(queries)       # rmsnorm of all-zero queries has no useful direction
    loss = torch.nn.functional.l1_loss(model(*inputs, pruner=star), torch.zeros(1, 8, 7))
    loss.backward()
    assert queries.grad is not None and (queries.grad.abs().sum(dim=-1) > 0).all()     # every patch slot learns


def test_star_replace_mode_selects_by_the_learned_queries_alone():
    model, inputs, embeddings, layout = setup()
    star = create_method('lightvla_star', query_mode='replace')
    torch.manual_seed(3)
    learned = torch.randn(32, model.hidden_size)
    with torch.no_grad():
        star.ensure_queries(32, model.hidden_size).queries.copy_(learned)
    expected = sorted(layout.patch_start + i
                      for i in set(clear_argmax(reference_scores(embeddings, layout, queries=learned)).tolist()))
    _, trace, _ = infer(model, inputs, star)
    assert visual_kept(trace, layout) == expected
    _, plain, _ = infer(model, inputs, create_method('lightvla'))
    assert visual_kept(plain, layout) != expected


def test_policy_loads_saved_star_queries(tmp_path):
    """The policy loads ``pruner_lightvla_star.safetensors`` before any forward has sized the queries."""
    model, tokenizer = tiny_model_and_tokenizer()
    save_checkpoint(model, tokenizer, tmp_path, {})
    learned = torch.randn(32, model.hidden_size)
    save_file({'queries': learned}, str(tmp_path / 'pruner_lightvla_star.safetensors'))
    policy = VLAPolicy.from_checkpoint(tmp_path, method='lightvla_star', method_options=dict(query_mode='replace'))
    assert torch.equal(policy.method.trainable_module().queries.detach(), learned)
    frames = random_frames(model.config)
    loaded = policy.infer(frames, np.zeros(8), INSTRUCTIONS[0]).record.visual_tokens_kept
    assert loaded > 1                    # all-zero queries would keep a single patch
    policy.set_method('lightvla_star', query_mode='replace')         # switching method reloads them too
    assert torch.equal(policy.method.trainable_module().queries.detach(), learned)
    assert policy.infer(frames, np.zeros(8), INSTRUCTIONS[0]).record.visual_tokens_kept == loaded

    wrong = tmp_path / 'wrong'
    save_checkpoint(model, tokenizer, wrong, {})
    save_file({'queries': torch.randn(31, model.hidden_size)}, str(wrong / 'pruner_lightvla_star.safetensors'))
    policy = VLAPolicy.from_checkpoint(wrong, method='lightvla_star')
    with pytest.raises(ValueError, match='lightvla_star'):
        policy.infer(frames, np.zeros(8), INSTRUCTIONS[0])


# ----------------------------------------------------------------------------- padded batches

def padded_batch(model, tokenizer):
    """Three observations, the first with a 7-word-shorter instruction (so 7 pad tokens), batched as training does."""
    samples = [example_inputs(model, tokenizer, instruction, seed)
               for seed, instruction in enumerate([INSTRUCTIONS[0], INSTRUCTIONS[1], INSTRUCTIONS[1]])]
    ids, padding = pad_prompts([sample[2][0].tolist() for sample in samples], model.config)
    assert int(padding[0].sum()) == 7 and not padding[1:].any()
    batch = (torch.cat([s[0] for s in samples]), torch.cat([s[1] for s in samples]), ids)
    return samples, batch, padding


@pytest.mark.parametrize('name', ['lightvla', 'lightvla_star'])
@pytest.mark.parametrize('training', [True, False])
def test_a_padded_batch_gives_each_sample_its_own_outputs_and_loss(name, training):
    model, tokenizer = tiny_model_and_tokenizer(seed=4)
    samples, batch, padding = padded_batch(model, tokenizer)
    method = create_method(name)            # noise_scale 0
    method.train(training)
    if name == 'lightvla_star':
        torch.manual_seed(5)
        with torch.no_grad():
            method.ensure_queries(32, model.hidden_size).queries.normal_(std=0.5)
    target = torch.linspace(-1, 1, 56).reshape(1, 8, 7)
    with torch.no_grad():
        alone = [model(*sample, pruner=method) for sample in samples]
        together = model(*batch, prompt_padding=padding, pruner=method)
    for row, single in enumerate(alone):
        torch.testing.assert_close(together[row:row + 1], single, atol=ATOL, rtol=0)
        loss_alone = torch.nn.functional.l1_loss(single, target)
        loss_in_batch = torch.nn.functional.l1_loss(together[row:row + 1], target)
        assert abs(float(loss_in_batch - loss_alone)) < ATOL
    # The selection differs between the samples, so the batch really mixes per-row sets.
    layout = model.layout(samples[0][2].shape[1] - 1)
    with torch.no_grad():
        chosen = [method.selected_patches(method.scores(
            model.embed_sequence(model.encode_images(s[0]), s[1], s[2]), layout if i == 0 else
            model.layout(s[2].shape[1] - 1)))[0] for i, s in enumerate(samples)]
    assert not torch.equal(chosen[1], chosen[2])


def test_pad_tokens_are_never_queries():
    """Changing what sits in the pad slots (the model masks them as keys) changes nothing LightVLA selects."""
    model, tokenizer = tiny_model_and_tokenizer(seed=4)
    _, (pixels, proprio, ids), padding = padded_batch(model, tokenizer)
    method = create_method('lightvla')
    with torch.no_grad():
        embeddings = model.embed_sequence(model.encode_images(pixels), proprio, ids)
        layout = model.layout(ids.shape[1] - 1)
        full = torch.zeros(embeddings.shape[:2], dtype=torch.bool)
        full[:, layout.prompt_start:layout.readout_index + 1] = padding
        garbage = embeddings.clone()
        garbage[full] = torch.randn(int(full.sum()), embeddings.shape[-1]) * 10
        torch.testing.assert_close(method.scores(garbage, layout, full), method.scores(embeddings, layout, full),
                                   atol=1e-6, rtol=0)
        assert not torch.allclose(method.scores(garbage, layout), method.scores(embeddings, layout), atol=1e-3)


# ----------------------------------------------------------------------------- LightVLA* files and training

def test_star_queries_are_saved_with_their_query_mode(tmp_path):
    model, tokenizer = tiny_model_and_tokenizer()
    save_checkpoint(model, tokenizer, tmp_path, {})
    trained = create_method('lightvla_star', query_mode='replace')
    learned = torch.randn(32, model.hidden_size)
    with torch.no_grad():
        trained.ensure_queries(32, model.hidden_size).queries.copy_(learned)
    trained.save_queries(tmp_path)
    with pytest.warns(UserWarning, match="query_mode 'replace'"):
        policy = VLAPolicy.from_checkpoint(tmp_path, method='lightvla_star')      # asks for the default 'add'
    assert policy.method.options.query_mode == 'replace' and policy.method_warning == ''
    assert torch.equal(policy.method.trainable_module().queries.detach(), learned)
    assert policy.method_refusals() == ()


def test_a_star_checkpoint_without_queries_warns_and_the_node_refuses_the_method(tmp_path):
    from vla_prune_ros.parameters import ModelInfo, ParameterError, validate
    model, tokenizer = tiny_model_and_tokenizer()
    save_checkpoint(model, tokenizer, tmp_path, {})
    with pytest.warns(UserWarning, match='plain LightVLA'):
        policy = VLAPolicy.from_checkpoint(tmp_path, method='lightvla_star')
    assert 'pruner_lightvla_star.safetensors' in policy.method_warning
    refusals = dict(policy.method_refusals())
    assert set(refusals) == {'lightvla_star'}
    config = model.config
    info = ModelInfo(action_dim=config.action_dim, chunk_len=config.chunk_len, num_cameras=config.num_cameras,
                     proprio_dim=config.proprio_dim, camera_names=tuple(config.camera_names),
                     action_names=tuple(config.action_names), refused_methods=policy.method_refusals())
    values = {'proprio_source': 'zeros'}
    validate({**values, 'method': 'lightvla'}, info)
    with pytest.raises(ParameterError, match='method: lightvla_star: .* plain LightVLA'):
        validate({**values, 'method': 'lightvla_star'}, info)


def test_prepared_queries_run_their_forward_through_the_accelerate_wrapper():
    """Under DDP gradients are reduced only for modules whose forward ran through the wrapper."""
    calls = []

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self):
            calls.append(1)
            return self.module()

    class FakeAccelerator:
        device = torch.device('cpu')

        def prepare(self, module):
            return Wrapper(module)

    model, inputs, _, _ = setup()
    star = create_method('lightvla_star')
    star.train(True)
    plain = star.prepare_queries(FakeAccelerator(), 32, model.hidden_size)
    assert plain is star.trainable_module() and tuple(plain.queries.shape) == (32, model.hidden_size)
    torch.nn.functional.l1_loss(model(*inputs, pruner=star), torch.zeros(1, 8, 7)).backward()
    assert calls and plain.queries.grad is not None
