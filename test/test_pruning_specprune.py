"""SpecPrune-VLA pinned down on constructed inputs.

Most tests drive the method's hooks directly, as ``VLAModel.run_llm`` calls them, on the OFT
token layout (2 views x 256 patches, 224 px frames) so the paper's numbers apply unscaled:
frames are copies of a previous frame with chosen 14x14 patches altered, and the prompt
attention is a vector we choose. The dynamic stage, the attention rows and the policy path
run on tiny real models.
"""
import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from model_fixtures import INSTRUCTIONS, example_inputs, random_frames, tiny_model_and_tokenizer
from vla_prune_ros.model import ForwardTrace, TokenLayout
from vla_prune_ros.model.processing import pixel_values
from vla_prune_ros.policy import VLAPolicy
from vla_prune_ros.pruning import InferenceStep, PruningMethod, create_method
from vla_prune_ros.pruning.specprune import patch_cosine_similarity

PATCH = 14
GRID = 16                    # OFT: 224 px / 14 = 16 x 16 patches per view
LAYOUT = TokenLayout(num_cameras=2, patches_per_camera=GRID * GRID, has_proprio=True, prompt_len=12,
                     num_actions=56)
SEQ_LEN = LAYOUT.seq_len
NON_VISUAL = set(range(SEQ_LEN)) - set(range(LAYOUT.patch_start, LAYOUT.patch_end))

# Options that switch off every protection, so kept patches are exactly the changed ones.
ONLY_CHANGES = dict(static_cap_coarse=256, static_cap_fine=256, topk_coarse=(0, 0), topk_fine=(0, 0),
                    use_global_history=False, min_visual_tokens=1)


# ----------------------------------------------------------------------------- helpers

def random_views(seed: int, side: int = GRID * PATCH) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(2)]


def altered(frames: list[np.ndarray], changes: dict[int, list[int]], seed: int = 1, grid: int = GRID
            ) -> list[np.ndarray]:
    """Copies of ``frames`` with the listed patches (view -> row-major patch ids) replaced by new noise."""
    rng = np.random.default_rng(seed)
    out = [frame.copy() for frame in frames]
    for view, patches in changes.items():
        for patch in patches:
            row, col = divmod(patch, grid)
            out[view][row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH] = rng.integers(
                0, 256, (PATCH, PATCH, 3), dtype=np.uint8)
    return out


def positions_of(view: int, patches, layout: TokenLayout = LAYOUT) -> set[int]:
    return {layout.camera_range(view).start + int(p) for p in patches}


def visual(kept: set[int], layout: TokenLayout = LAYOUT) -> set[int]:
    return {p for p in kept if layout.patch_start <= p < layout.patch_end}


def in_view(kept: set[int], view: int, layout: TokenLayout = LAYOUT) -> set[int]:
    return kept & set(layout.camera_range(view))


def attention_vector(seed: int, length: int = SEQ_LEN) -> torch.Tensor:
    """Distinct prompt-attention values with gaps of 1/length (far above any tie-break epsilon)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randperm(length, generator=generator).float() + 1) / length


def top_by(attention: torch.Tensor, candidates, k: int) -> set[int]:
    return set(sorted(candidates, key=lambda p: -float(attention[p]))[:k])


def infer(method, frames, attention: dict[int, torch.Tensor], mode='coarse', speed=None, num_layers=3,
          layout=LAYOUT):
    """One inference through the hooks as ``run_llm`` calls them.

    ``attention`` maps a layer to prompt attention over *original* positions. Returns the set of
    original positions alive after each hooked layer, and the step (with its reported stages).
    """
    step = InferenceStep(frames=frames, mode=mode, ee_speed=speed)
    positions = torch.arange(layout.seq_len)
    hidden = torch.zeros(1, layout.seq_len, 8)
    hooked = method.attention_layers(num_layers)
    assert method.before_llm(hidden, positions, layout, step) is None     # SpecPrune never cuts before layer 0
    non_visual = set(range(layout.seq_len)) - set(range(layout.patch_start, layout.patch_end))
    alive = []
    for layer in range(num_layers - 1):
        layer_attention = attention[layer][positions] if layer in hooked else None
        result = method.after_layer(layer, hidden[:, :len(positions)], positions, layout, step, layer_attention)
        if result is not None:
            positions = positions[result.keep]
            assert non_visual <= set(positions.tolist())     # the method itself never drops a non-visual token
        alive.append(set(positions.tolist()))
    return alive, step


# ----------------------------------------------------------------------------- frame change

def test_patch_cosine_similarity_matches_a_direct_computation():
    before = random_views(0)[0]
    now = altered([before], {0: [0, 17, 255]})[0]
    expected = []
    for patch in range(GRID * GRID):
        row, col = divmod(patch, GRID)
        a = now[row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH].astype(np.float64).ravel()
        b = before[row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH].astype(np.float64).ravel()
        expected.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    similarity = patch_cosine_similarity(now, before, GRID)
    np.testing.assert_allclose(similarity, expected, atol=1e-5)
    assert np.all(similarity[[0, 17, 255]] < 0.9) and np.all(np.delete(similarity, [0, 17, 255]) > 0.99999)


@pytest.mark.parametrize('speed, delta', [(0.0, 6), (4.0, 6), (5.0, 5), (6.5, 4), (7.0, 4), (8.0, 3),
                                          (9.0, 3),      # int() truncates toward zero: int(-0.67) = 0
                                          (10.0, 2), (11.0, 1), (20.0, 1)])
def test_delta_formula(speed, delta):
    method = create_method('specprune')
    paper = max(1, min(int(-16 / 3 * speed / 6 + 22 / 3) + 3, 6))
    assert method.delta_steps(speed) == paper == delta


def test_delta_without_a_speed_and_with_a_speed_scale():
    assert create_method('specprune').delta_steps(None) == 6
    assert create_method('specprune').delta_steps(float('nan')) == 6
    # 0.05 m/s x 100 = 5 formula units -> 5 steps.
    assert create_method('specprune', delta_speed_scale=100.0).delta_steps(0.05) == 5


def test_first_inference_of_an_episode_keeps_every_token():
    method = create_method('specprune', min_visual_tokens=1)
    frames = random_views(0)
    alive, step = infer(method, frames, {0: attention_vector(0), 1: attention_vector(1)})
    assert alive == [set(range(SEQ_LEN))] * 2
    assert step.stages == [('input', SEQ_LEN), ('static_layer0', SEQ_LEN), ('static_layer1', SEQ_LEN)]


def test_static_patches_are_dropped_and_changed_ones_survive():
    frames = random_views(0)
    changes = {0: [3, 40, 41, 100, 200, 255], 1: [0, 7, 128]}
    changed = positions_of(0, changes[0]) | positions_of(1, changes[1])
    now = altered(frames, changes)

    method = create_method('specprune', **ONLY_CHANGES)
    infer(method, frames, {0: attention_vector(0), 1: attention_vector(1)})
    alive, step = infer(method, now, {0: attention_vector(2), 1: attention_vector(3)})
    assert visual(alive[0]) == changed and visual(alive[1]) == changed
    assert step.stages[1:] == [('static_layer0', len(NON_VISUAL) + 9), ('static_layer1', len(NON_VISUAL) + 9)]

    # With the attention top-k on (coarse: 16/12 after layer 1, 3x that after layer 0), each view's most
    # attended patches survive too, static or not.
    method = create_method('specprune', static_cap_coarse=256, use_global_history=False, min_visual_tokens=1)
    infer(method, frames, {0: attention_vector(0), 1: attention_vector(1)})
    a0, a1 = attention_vector(2), attention_vector(3)
    alive, _ = infer(method, now, {0: a0, 1: a1})
    views = [set(LAYOUT.camera_range(v)) for v in (0, 1)]
    after0 = changed | top_by(a0, views[0], 48) | top_by(a0, views[1], 36)
    after1 = changed | top_by(a1, views[0] & after0, 16) | top_by(a1, views[1] & after0, 12)
    assert visual(alive[0]) == after0 and visual(alive[1]) == after1
    assert len(after1) < len(after0) < 512


def test_similarity_threshold_decides_what_is_static():
    frames = random_views(0)
    rng = np.random.default_rng(5)
    now = altered(frames, {0: [7], 1: [0]})            # clearly changed
    slight = now[0][0:PATCH, 3 * PATCH:4 * PATCH].astype(np.float64)
    now[0][0:PATCH, 3 * PATCH:4 * PATCH] = np.clip(slight + rng.normal(0, 12, slight.shape), 0, 255).astype(np.uint8)
    a, b = now[0][0:PATCH, 3 * PATCH:4 * PATCH].astype(np.float64).ravel(), slight.ravel()
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert 0.99 < cosine < 0.999                        # patch 3 of view 0 changed slightly

    expected = {0.986: positions_of(0, [7]) | positions_of(1, [0]),
                0.999: positions_of(0, [3, 7]) | positions_of(1, [0])}
    for threshold, kept in expected.items():
        method = create_method('specprune', similarity_threshold=threshold, **ONLY_CHANGES)
        infer(method, frames, {0: attention_vector(0), 1: attention_vector(1)})
        alive, _ = infer(method, now, {0: attention_vector(2), 1: attention_vector(3)})
        assert visual(alive[0]) == kept, threshold


@pytest.mark.parametrize('mode, options, kept_per_view', [
    ('coarse', {}, 256 - 200),
    ('fine', {}, 256 - 220),
    ('coarse', dict(static_cap_coarse=100), 256 - 100),
    ('fine', dict(static_cap_fine=0), 256),
])
def test_static_cap_per_view(mode, options, kept_per_view):
    """A scene that did not change at all: only ``cap`` patches per view may be dropped."""
    frames = random_views(0)
    method = create_method('specprune', topk_coarse=(0, 0), topk_fine=(0, 0), use_global_history=False,
                           min_visual_tokens=1, **options)
    infer(method, frames, {0: attention_vector(0), 1: attention_vector(1)}, mode=mode)
    alive, _ = infer(method, [f.copy() for f in frames], {0: attention_vector(2), 1: attention_vector(3)},
                     mode=mode)
    assert [len(in_view(alive[0], v)) for v in (0, 1)] == [kept_per_view] * 2


def test_static_cap_never_drops_a_changed_patch():
    frames = random_views(0)
    changes = {0: list(range(0, 60, 2)), 1: list(range(100, 200))}   # 30 and 100 changed patches
    method = create_method('specprune', topk_coarse=(0, 0), use_global_history=False, min_visual_tokens=1)
    infer(method, frames, {0: attention_vector(0), 1: attention_vector(1)})
    alive, _ = infer(method, altered(frames, changes), {0: attention_vector(2), 1: attention_vector(3)})
    # View 0: 226 static candidates, capped at 200 -> the 30 changed + 26 static survive.
    assert positions_of(0, changes[0]) <= alive[0] and len(in_view(alive[0], 0)) == 56
    # View 1: 156 static candidates, under the cap -> exactly the 100 changed survive.
    assert in_view(alive[0], 1) == positions_of(1, changes[1])


def test_caps_and_topk_are_scaled_to_the_models_patch_grid():
    """16 patches per view (56 px): cap 200/256 -> 12 (coarse), 220/256 -> 14 (fine)."""
    layout = TokenLayout(num_cameras=2, patches_per_camera=16, has_proprio=True, prompt_len=5, num_actions=56)
    frames = random_views(0, side=56)
    for mode, kept_per_view in (('coarse', 4), ('fine', 2)):
        method = create_method('specprune', topk_coarse=(0, 0), topk_fine=(0, 0), use_global_history=False,
                               min_visual_tokens=1)
        attention = {0: attention_vector(0, layout.seq_len), 1: attention_vector(1, layout.seq_len)}
        infer(method, frames, attention, mode=mode, layout=layout)
        alive, _ = infer(method, frames, attention, mode=mode, layout=layout)
        assert [len(in_view(alive[0], v, layout)) for v in (0, 1)] == [kept_per_view] * 2


def test_fine_mode_keeps_a_superset_of_coarse_when_static_patches_are_under_the_caps():
    """Fine mode has the larger top-k (25/19 vs 16/12) and the larger static cap (220 vs 200).

    With fewer static candidates than either cap, only the top-k differs, so fine keeps every
    token coarse keeps and more. (When a view has more than 200 static patches the larger fine
    cap drops more of them: see ``test_static_cap_per_view``; this is the released code's choice.)
    """
    frames = random_views(0)
    now = altered(frames, {0: list(range(0, 200, 2)), 1: list(range(50, 130))})
    attention = {0: attention_vector(2), 1: attention_vector(3)}
    alive = {}
    for mode in ('coarse', 'fine'):
        method = create_method('specprune', use_global_history=False, min_visual_tokens=1)
        infer(method, frames, {0: attention_vector(0), 1: attention_vector(1)}, mode=mode)
        alive[mode], _ = infer(method, now, attention, mode=mode)
    for layer in (0, 1):
        assert alive['coarse'][layer] < alive['fine'][layer]


# ----------------------------------------------------------------------------- frame history (Δ)

@pytest.mark.parametrize('speed, steps_per_inference, back', [
    (20.0, 1, 1), (10.0, 1, 2), (8.0, 1, 3), (7.0, 1, 4), (5.0, 1, 5), (0.0, 1, 6),
    (5.0, 2, 3),            # Δ = 5 control steps = ceil(5 / 2) inferences
    (0.0, 8, 1),            # the default: Δ <= 6 steps is always the previous inference
])
def test_frame_compared_is_delta_back(speed, steps_per_inference, back):
    """Frame i differs from frame i-1 in patch i of both views, so comparing frame 6 with the
    frame ``back`` inferences earlier finds exactly patches 7-back .. 6 changed."""
    frames = [random_views(0)]
    for i in range(1, 7):
        frames.append(altered(frames[-1], {0: [i], 1: [i]}, seed=i))
    method = create_method('specprune', steps_per_inference=steps_per_inference, **ONLY_CHANGES)
    attention = {0: attention_vector(0), 1: attention_vector(1)}
    for i in range(6):
        infer(method, frames[i], attention, speed=speed)
    alive, _ = infer(method, frames[6], attention, speed=speed)
    changed = range(7 - back, 7)
    assert visual(alive[0]) == positions_of(0, changed) | positions_of(1, changed)


# ----------------------------------------------------------------------------- global history

def run_history_episode(use_global_history: bool):
    """Inference 1 on a frame; inference 2 on the same frame (all static), attention away from
    inference 1's layer-1 top-k set H. Returns (H, inference-2 alive sets, its attention, method)."""
    frames = random_views(0)
    method = create_method('specprune', static_cap_coarse=256, use_global_history=use_global_history,
                           min_visual_tokens=1)
    first = {0: attention_vector(0), 1: attention_vector(1)}
    infer(method, frames, first)
    views = [set(LAYOUT.camera_range(v)) for v in (0, 1)]
    history = top_by(first[1], views[0], 16) | top_by(first[1], views[1], 12)
    second = {layer: attention_vector(10 + layer) for layer in (0, 1)}
    for attention in second.values():
        attention[sorted(history)] = 1e-4 * torch.rand(len(history))     # H would be pruned on its own
    alive, _ = infer(method, [f.copy() for f in frames], second)
    return history, alive, second, method


def test_global_history_keeps_the_previous_important_set():
    history, alive, attention, method = run_history_episode(use_global_history=True)
    views = [set(LAYOUT.camera_range(v)) for v in (0, 1)]
    top0 = top_by(attention[0], views[0], 48) | top_by(attention[0], views[1], 36)
    assert not history & top0
    assert visual(alive[0]) == top0 | history
    top1 = top_by(attention[1], views[0] & alive[0], 16) | top_by(attention[1], views[1] & alive[0], 12)
    assert visual(alive[1]) == top1 | history
    # The next inference carries this inference's layer-1 top-k, not the older set.
    assert set(method.previous_important.tolist()) == top1


def test_without_global_history_the_previous_set_is_dropped():
    history, alive, attention, _ = run_history_episode(use_global_history=False)
    views = [set(LAYOUT.camera_range(v)) for v in (0, 1)]
    assert visual(alive[0]) == top_by(attention[0], views[0], 48) | top_by(attention[0], views[1], 36)
    assert not history & alive[0]


def test_reset_clears_the_episode():
    _, alive, _, method = run_history_episode(use_global_history=True)
    assert len(visual(alive[1])) < 512 and len(method.frame_history) == 2
    method.reset()
    assert len(method.frame_history) == 0 and len(method.previous_important) == 0
    alive, _ = infer(method, random_views(0), {0: attention_vector(0), 1: attention_vector(1)})
    assert alive == [set(range(SEQ_LEN))] * 2        # a new episode starts without history


# ----------------------------------------------------------------------------- floors and forced counts

@pytest.mark.parametrize('floor', [1, 16, 40])
def test_visual_count_never_falls_below_the_floor(floor):
    """Threshold 0 makes every patch static, caps at 256 allow dropping all of them, top-k 0."""
    method = create_method('specprune', similarity_threshold=0.0, static_cap_coarse=256, topk_coarse=(0, 0),
                           use_global_history=False, min_visual_tokens=floor)
    a0, a1 = attention_vector(2), attention_vector(3)
    infer(method, random_views(0), {0: attention_vector(0), 1: attention_vector(1)})
    alive, _ = infer(method, random_views(1), {0: a0, 1: a1})       # another scene: cosine > 0 everywhere
    every_patch = set(range(LAYOUT.patch_start, LAYOUT.patch_end))
    assert visual(alive[0]) == top_by(a0, every_patch, floor)        # topped up by attention
    assert visual(alive[1]) == visual(alive[0])


def test_pruning_everything_is_rejected():
    with pytest.raises(ValueError, match='min_visual_tokens'):
        create_method('specprune', min_visual_tokens=0)


def test_forced_static_visual_keeps_exactly_n_protected_first():
    frames = random_views(0)
    now = altered(frames, {0: list(range(30)), 1: list(range(20))})
    views = [set(LAYOUT.camera_range(v)) for v in (0, 1)]
    for count in (10, 150):
        method = create_method('specprune', forced_static_visual=count, min_visual_tokens=1)
        first = {0: attention_vector(0), 1: attention_vector(1)}
        alive, _ = infer(method, frames, first)       # forced from the first inference on
        assert len(visual(alive[0])) == count
        history = top_by(first[1], views[0] & alive[0], 16) | top_by(first[1], views[1] & alive[0], 12)
        a0, a1 = attention_vector(2), attention_vector(3)
        alive, step = infer(method, now, {0: a0, 1: a1})
        protected = top_by(a0, views[0], 48) | top_by(a0, views[1], 36) | history
        if count >= len(protected):
            expected = protected | top_by(a0, (views[0] | views[1]) - protected, count - len(protected))
        else:
            expected = top_by(a0, protected, count)
        assert visual(alive[0]) == expected and len(expected) == count
        assert visual(alive[1]) == expected                # already at the operating point
        assert step.stages[1:] == [('static_layer0', len(NON_VISUAL) + count),
                                   ('static_layer1', len(NON_VISUAL) + count)]


# ----------------------------------------------------------------------------- on a real model

def model_inputs(model, tokenizer, frames):
    config = model.config
    _, proprio, ids = example_inputs(model, tokenizer)
    return pixel_values(frames, config), proprio, ids


def run(model, method, pixels, proprio, ids, frames, mode='coarse'):
    trace = ForwardTrace()
    step = InferenceStep(frames=frames, mode=mode)
    with torch.no_grad():
        model(pixels, proprio, ids, pruner=method, step=step, trace=trace)
    return trace, step


@pytest.mark.parametrize('num_layers, dynamic_layers', [(8, {2, 4, 5, 6}), (16, {2, 5, 8, 10, 12})])
@pytest.mark.parametrize('floor', [4, 16])
def test_dynamic_stage_shrinks_visual_tokens_at_the_scaled_layers(num_layers, dynamic_layers, floor):
    """S = {5, 10, 15, 20, 25} for 32 layers, scaled to the depth (Python's round) and kept in 2 .. L-2."""
    model, tokenizer = tiny_model_and_tokenizer(llm=dict(num_hidden_layers=num_layers))
    frames = random_frames(model.config)
    pixels, proprio, ids = model_inputs(model, tokenizer, frames)
    layout = model.layout(ids.shape[1] - 1)
    method = create_method('specprune', min_visual_tokens=floor)
    assert method.dynamic_layer_set(num_layers) == dynamic_layers
    trace, step = run(model, method, pixels, proprio, ids, frames)   # first inference: static keeps all 32

    non_visual = layout.seq_len - 32
    expected, count = [], 32
    for layer in range(num_layers):
        expected.append(non_visual + count)
        if layer in dynamic_layers:
            count = min(count, max(floor, math.ceil(0.8 * count)))
    assert trace.layer_tokens == expected
    assert [name for name, _ in step.stages if name.startswith('dynamic')] == [
        f'dynamic_layer{layer}' for layer in sorted(dynamic_layers)]

    method = create_method('specprune', min_visual_tokens=floor, dynamic=False)
    assert method.dynamic_layer_set(num_layers) == set()
    trace, step = run(model, method, pixels, proprio, ids, frames)
    assert trace.layer_tokens == [layout.seq_len] * num_layers
    assert not [name for name, _ in step.stages if name.startswith('dynamic')]


def test_dynamic_stage_ranks_by_the_ema_of_attention_ranks():
    """One view of 16 patches; EMA (α = 0.2) of each patch's normalised rank at layers 0, 1, 2; after
    layer 2 (a dynamic layer of a 16-layer model) the top ceil(0.8 * 16) = 13 by EMA survive."""
    layout = TokenLayout(num_cameras=1, patches_per_camera=16, has_proprio=False, prompt_len=4, num_actions=7)
    patches = list(range(layout.patch_start, layout.patch_end))
    attention = {layer: attention_vector(20 + layer, layout.seq_len) for layer in range(16)}
    # Layers 0 and 1 favour the first patches, layer 2 the last ones: the EMA and layer 2 alone disagree.
    for layer, order in ((0, patches), (1, patches), (2, patches[::-1])):
        attention[layer][order] = torch.linspace(1.0, 0.5, 16)
    attention[2][[1, 2]] = torch.tensor([0.4, 0.3])
    method = create_method('specprune', min_visual_tokens=1)
    frames = [np.zeros((56, 56, 3), dtype=np.uint8)]
    alive, step = infer(method, frames, attention, num_layers=16, layout=layout)

    def ranks(values):       # 0 = least attended, 1 = most attended, among the visual tokens present
        order = np.argsort(np.argsort([float(values[p]) for p in patches]))
        return order / (len(patches) - 1)
    ema = ranks(attention[0])
    for layer in (1, 2):
        ema = 0.8 * ema + 0.2 * ranks(attention[layer])
    expected = {patches[i] for i in np.argsort(-ema)[:13]}
    assert visual(alive[2], layout) == expected
    assert expected != top_by(attention[2], patches, 13)
    assert ('dynamic_layer2', layout.seq_len - 3) in step.stages


def test_prompt_attention_matches_eager_llama_attention_weights():
    """The attention SpecPrune ranks by: prompt rows (text + readout) to every token, mean over heads and rows."""
    model, tokenizer = tiny_model_and_tokenizer(llm=dict(num_hidden_layers=3))
    pixels, proprio, ids = example_inputs(model, tokenizer, INSTRUCTIONS[1])
    layout = model.layout(ids.shape[1] - 1)

    class Recorder(PruningMethod):
        name = 'recorder'

        def __init__(self):
            super().__init__()
            self.seen = {}

        def attention_layers(self, num_layers):
            return {0, 1}

        def after_layer(self, layer, hidden, positions, layout, step, attention):
            self.seen[layer] = attention

    recorder = Recorder()
    config = LlamaConfig(**model.config.llm)
    config._attn_implementation = 'eager'
    reference = LlamaModel(config).eval()
    reference.load_state_dict(model.llm.state_dict())
    with torch.no_grad():
        model(pixels, proprio, ids, pruner=recorder)
        embeddings = model.embed_sequence(model.encode_images(pixels), proprio, ids)
        weights = reference(inputs_embeds=embeddings, attention_mask=torch.zeros(1, 1, layout.seq_len, layout.seq_len),
                            output_attentions=True).attentions
    rows = slice(layout.prompt_start, layout.readout_index + 1)
    for layer in (0, 1):
        expected = weights[layer][0, :, rows].mean(dim=(0, 1))
        torch.testing.assert_close(recorder.seen[layer], expected, atol=1e-6, rtol=0)


def test_policy_prunes_static_patches_and_reset_starts_a_new_episode():
    model, tokenizer = tiny_model_and_tokenizer(llm=dict(num_hidden_layers=3), center_crop=False)
    policy = VLAPolicy(model, tokenizer, 'specprune', dict(ONLY_CHANGES, dynamic=False))
    frames = random_views(0, side=56)
    moved = altered(frames, {0: [5], 1: [2, 9]}, grid=4)
    proprio = np.zeros(8)
    first = policy.infer(frames, proprio, INSTRUCTIONS[0], ee_speed=0.0)
    second = policy.infer(moved, proprio, INSTRUCTIONS[0], ee_speed=0.0)
    third = policy.infer(moved, proprio, INSTRUCTIONS[0], ee_speed=0.0)
    assert [r.record.visual_tokens_kept for r in (first, second, third)] == [32, 3, 1]   # 1 = the floor
    non_visual = second.record.tokens_total - 32
    assert second.record.layer_tokens == [non_visual + 32, non_visual + 3, non_visual + 3]
    policy.reset()
    assert policy.infer(moved, proprio, INSTRUCTIONS[0]).record.visual_tokens_kept == 32
