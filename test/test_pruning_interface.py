"""The pruning interface: the baseline is the unpruned model, every method drops only visual
tokens, bad names and options fail loudly, and a new method is one class."""
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from model_fixtures import INSTRUCTIONS, random_frames, tiny_model_and_tokenizer
from vla_prune_ros.options import Options, option
from vla_prune_ros.model.processing import normalize_proprio, pixel_values, prepare_image, prompt_ids
from vla_prune_ros.policy import VLAPolicy
from vla_prune_ros.pruning import METHODS, PruneResult, PruningMethod, available_methods, create_method, register
from vla_prune_ros.pruning.base import InferenceStep

PROPRIO = np.linspace(-0.5, 0.5, 8)


def moved(frames: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """Copies of the frames with two 14x14 patches per camera replaced."""
    rng = np.random.default_rng(seed)
    out = [frame.copy() for frame in frames]
    for frame in out:
        for row, col in rng.integers(0, 4, (2, 2)):
            frame[row * 14:(row + 1) * 14, col * 14:(col + 1) * 14] = rng.integers(0, 256, (14, 14, 3))
    return out


def test_every_documented_method_is_registered():
    assert {'none', 'specprune', 'lightvla', 'lightvla_star'} <= set(available_methods())


def test_none_is_bit_identical_to_the_unpruned_model():
    model, tokenizer = tiny_model_and_tokenizer(llm=dict(num_hidden_layers=3))
    config = model.config
    policy = VLAPolicy(model, tokenizer, 'none')
    images = random_frames(config, seed=3, size=80)        # resized and center-cropped by the policy
    output = policy.infer(images, PROPRIO, INSTRUCTIONS[1])

    frames = [prepare_image(image, config.vision.image_size, config.center_crop) for image in images]
    inputs = (pixel_values(frames, config), torch.tensor(normalize_proprio(PROPRIO, config)[None], dtype=torch.float32),
              torch.tensor([prompt_ids(tokenizer, INSTRUCTIONS[1], config)]))
    with torch.no_grad():
        unpruned = model(*inputs, pruner=None)
        baseline = model(*inputs, pruner=create_method('none'), step=InferenceStep(frames=frames))
    assert torch.equal(baseline, unpruned)
    assert np.array_equal(output.normalized_actions, unpruned[0].double().numpy())
    record = output.record
    assert record.layer_tokens == [record.tokens_total] * 3 and record.visual_tokens_kept == 32
    assert record.flops == record.flops_unpruned


def spy_on(method: PruningMethod, calls: list):
    """Wrap a method's hooks: record each cut and check it keeps every non-visual token itself."""
    before_llm, after_layer = method.before_llm, method.after_layer

    def check(result, positions, layout, where):
        if result is not None and result.keep is not None:
            kept = set(positions[result.keep].tolist())
            non_visual = set(positions[~layout.is_visual(positions)].tolist())
            assert non_visual <= kept, f'{method.name} dropped non-visual tokens {sorted(non_visual - kept)} {where}'
            calls.append((where, len(positions) - len(kept)))
        if result is not None and result.keep_visual is not None:
            kept = positions[result.keep_visual].tolist()
            assert len(set(kept)) == len(kept), f'{method.name} listed a token twice {where}'
            assert all(layout.patch_start <= p < layout.patch_end for p in kept), \
                f'{method.name} listed non-visual tokens as visual {where}'
            calls.append((where, int(layout.is_visual(positions).sum()) - len(kept)))
        return result

    method.before_llm = lambda hidden, positions, layout, step, padding=None: check(
        before_llm(hidden, positions, layout, step, padding), positions, layout, 'before layer 0')
    method.after_layer = lambda layer, hidden, positions, layout, step, attention: check(
        after_layer(layer, hidden, positions, layout, step, attention), positions, layout, f'after layer {layer}')


@pytest.mark.parametrize('name', available_methods())
def test_every_method_drops_only_visual_tokens(name):
    model, tokenizer = tiny_model_and_tokenizer(llm=dict(num_hidden_layers=4), center_crop=False)
    policy = VLAPolicy(model, tokenizer, name)
    calls = []
    spy_on(policy.method, calls)
    frames = random_frames(model.config, seed=1)
    records = [policy.infer(images, PROPRIO, INSTRUCTIONS[0], mode='fine').record
               for images in (frames, moved(frames, 2), moved(frames, 3))]
    layout = model.layout(len(prompt_ids(tokenizer, INSTRUCTIONS[0], model.config)) - 1)
    for record in records:
        tokens = record.layer_tokens
        assert all(a >= b for a, b in zip(tokens, tokens[1:]))
        assert tokens[-1] - record.visual_tokens_kept == layout.seq_len - 32      # all non-visual tokens present
    if name == 'none':
        assert calls == [] and all(r.visual_tokens_kept == 32 for r in records)
    else:       # the check above was exercised: each method cut something on these frames
        assert sum(dropped for _, dropped in calls) > 0 and records[-1].visual_tokens_kept < 32


@pytest.mark.parametrize('name, options, named', [
    ('nonesuch', {}, 'nonesuch'),
    ('specprune', dict(similarity_treshold=0.9), 'similarity_treshold'),
    ('lightvla', dict(topk_coarse=(1, 1)), 'topk_coarse'),
    ('none', dict(anything=1), 'anything'),
    ('specprune', dict(similarity_threshold=1.5), 'similarity_threshold'),
    ('specprune', dict(static_cap_coarse=257), 'static_cap_coarse'),
    ('specprune', dict(static_cap_fine=-1), 'static_cap_fine'),
    ('specprune', dict(topk_coarse=(16, 300)), 'topk_coarse'),
    ('specprune', dict(topk_fine=()), 'topk_fine'),
    ('specprune', dict(layer0_topk_multiplier=0), 'layer0_topk_multiplier'),
    ('specprune', dict(delta_min=0), 'delta_min'),
    ('specprune', dict(delta_max=0), 'delta_max'),
    ('specprune', dict(delta_max=16), 'delta_max'),          # beyond the policy's ring of 16 frames
    ('specprune', dict(dynamic_keep_ratio=0.0), 'dynamic_keep_ratio'),
    ('specprune', dict(dynamic_keep_ratio=1.2), 'dynamic_keep_ratio'),
    ('specprune', dict(ema_alpha=0.0), 'ema_alpha'),
    ('specprune', dict(min_visual_tokens=0), 'min_visual_tokens'),
    ('specprune', dict(dynamic_layers=(5, -1)), 'dynamic_layers'),
    ('specprune', dict(forced_static_visual=0), 'forced_static_visual'),
    ('lightvla', dict(noise='normal'), 'noise'),
    ('lightvla', dict(noise_scale=-0.1), 'noise_scale'),
    ('lightvla', dict(noise_scale=float('nan')), 'noise_scale'),
    ('lightvla', dict(forced_visual_keep=0), 'forced_visual_keep'),
    ('lightvla', dict(min_visual_tokens=0), 'min_visual_tokens'),
    ('lightvla_star', dict(query_mode='concat'), 'query_mode'),
    ('lightvla_star', dict(noise='normal'), 'noise'),
])
def test_bad_method_or_option_raises_value_error_naming_it(name, options, named):
    with pytest.raises(ValueError, match=named):
        create_method(name, **options)


def test_policy_rejects_bad_switches_and_keeps_its_method():
    model, tokenizer = tiny_model_and_tokenizer()
    policy = VLAPolicy(model, tokenizer, 'specprune', dict(min_visual_tokens=4))
    method = policy.method
    for name, options in (('specprune', dict(min_visual_tokens=0)), ('nonesuch', {}), ('lightvla', dict(k=1))):
        with pytest.raises(ValueError):
            policy.set_method(name, **options)
        assert policy.method is method
    with pytest.raises(ValueError, match='dynamic_keep_ratio'):
        method.update_options(dynamic_keep_ratio=2.0)
    with pytest.raises(ValueError, match='typo'):
        method.update_options(typo=1)
    assert method.options.dynamic_keep_ratio == 0.8 and method.options.min_visual_tokens == 4
    method.update_options(min_visual_tokens=8)
    assert method.options.min_visual_tokens == 8


@pytest.fixture
def every_other_patch():
    """A whole new method: one class, registered, no other file touched."""

    @dataclass(frozen=True)
    class EveryOtherPatchOptions(Options):
        prefix: ClassVar[str] = 'every_other_patch'
        stride: int = option(2, 'Keep every stride-th patch.', low=1, high=1024)

    @register
    class EveryOtherPatch(PruningMethod):
        """Keeps every ``stride``-th patch of each camera before layer 0."""
        name = 'every_other_patch'
        options_class = EveryOtherPatchOptions

        def before_llm(self, hidden, positions, layout, step, padding=None):
            offset = positions - layout.patch_start
            keep = ~layout.is_visual(positions) | (offset % layout.patches_per_camera % self.options.stride == 0)
            step.report('every_other_patch', int(keep.sum()))
            return PruneResult(keep=torch.nonzero(keep)[:, 0])

    yield EveryOtherPatch
    METHODS.pop(EveryOtherPatch.name)


def test_a_new_method_is_one_registered_class(every_other_patch):
    assert 'every_other_patch' in available_methods()
    model, tokenizer = tiny_model_and_tokenizer()
    policy = VLAPolicy(model, tokenizer, 'every_other_patch', dict(stride=4))
    record = policy.infer(random_frames(model.config), PROPRIO, INSTRUCTIONS[0]).record
    assert record.visual_tokens_kept == 2 * 4          # patches 0, 4, 8, 12 of each camera
    assert record.layer_tokens == [record.tokens_total - 24] * 2
    assert record.stages == [('every_other_patch', record.tokens_total - 24)]
    assert record.flops < record.flops_unpruned
    with pytest.raises(ValueError, match='stride'):
        policy.set_method('every_other_patch', stride=0)
