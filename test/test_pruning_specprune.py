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


def filled(protected: set[int], candidates: set[int], attention: torch.Tensor, count: int) -> set[int]:
    """A fixed-size cut: the protected candidates, then the most attended of the rest, ``count`` in all."""
    kept = protected & candidates
    return kept | top_by(attention, candidates - kept, count - len(kept))


def kept_positions(result, positions: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Original positions after a cut given as visual indices: BOS, those in order, the tail."""
    assert result.keep is None and result.keep_visual is not None
    visual = positions[result.keep_visual]
    assert bool(layout.is_visual(visual).all()) and len(set(visual.tolist())) == len(visual)
    tail = layout.seq_len - layout.patch_end
    return torch.cat([positions[:1], visual.sort().values, positions[len(positions) - tail:]])


def infer(method, frames, attention: dict[int, torch.Tensor], mode='coarse', speed=None, num_layers=3,
          layout=LAYOUT, earlier=None, template_tokens=0):
    """One inference through the hooks as ``run_llm`` calls them.

    ``attention`` maps a layer to prompt attention over *original* positions. Returns the set of
    original positions alive after each hooked layer, and the step (with its reported stages).
    ``earlier`` is the frame ring (``InferenceStep.earlier_frames``), None for none.
    """
    step = InferenceStep(frames=frames, mode=mode, ee_speed=speed, earlier_frames=earlier,
                         template_tokens=template_tokens)
    positions = torch.arange(layout.seq_len)
    hidden = torch.zeros(1, layout.seq_len, 8)
    hooked = method.attention_layers(num_layers)
    assert method.before_llm(hidden, positions, layout, step) is None     # SpecPrune never cuts before layer 0
    non_visual = set(range(layout.seq_len)) - set(range(layout.patch_start, layout.patch_end))
    alive = []
    tail = layout.seq_len - layout.patch_end
    for layer in range(num_layers - 1):
        # every row after the patches attends as the chosen vector (a (1, rows, tokens) matrix)
        layer_attention = attention[layer][positions].expand(1, tail, -1) if layer in hooked else None
        result = method.after_layer(layer, hidden[:, :len(positions)], positions, layout, step, layer_attention)
        if result is not None:
            positions = kept_positions(result, positions, layout)
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


@pytest.mark.parametrize('v, back', [(0.0, 5), (4.0, 5), (5.0, 4), (6.5, 3), (7.0, 3), (8.0, 2),
                                     (9.0, 2),      # int() truncates toward zero: int(-0.67) = 0
                                     (10.0, 1), (11.0, 1), (20.0, 1)])
def test_delta_formula_in_the_released_codes_units(v, back):
    """The code takes ``frames[-prev_T]`` with ``frames[-1]`` the current one: ``prev_T - 1`` steps back."""
    method = create_method('specprune', delta_speed_scale=1.0, delta_speed_offset=0.0)
    prev_t = min(int(-16 / 3 * v / 6 + 22 / 3) + 3, 6)
    assert method.delta_steps(v) == max(prev_t - 1, 1) == back


def test_delta_responds_across_the_simulated_arms_measured_speeds():
    """Measured TCP speeds of the simulated arm run 0.02-0.16 m/s (5th-95th percentile,
    benchmarks/speed_traces.json): Δ must span the whole 5..1 range over them, not sit at one end."""
    method = create_method('specprune')
    speeds = [0.0, 0.02, 0.05, 0.08, 0.10, 0.13, 0.16, 0.3]
    deltas = [method.delta_steps(v) for v in speeds]
    assert deltas == sorted(deltas, reverse=True)               # faster -> nearer frame
    assert deltas[1] == 5 and deltas[6] == 1 and len(set(deltas[1:7])) >= 4
    assert method.delta_steps(None) == method.delta_steps(float('nan')) == 5     # unknown: the farthest


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
    ks = (16, 12)
    # Fixed-size cuts: |changed| + 3k per view after layer 0, |changed| + 2k after layer 1, where
    # layer 0's first k (S5) stay protected; the slots the top-k shares with protected tokens go
    # to the next most attended.
    after0 = set().union(*(filled(changed, views[v], a0, len(changed & views[v]) + 3 * k) for v, k in enumerate(ks)))
    layer0_first_k = top_by(a0, views[0], 16) | top_by(a0, views[1], 12)
    after1 = set().union(*(filled(changed | layer0_first_k, views[v] & after0, a1, len(changed & views[v]) + 2 * k)
                           for v, k in enumerate(ks)))
    assert visual(alive[0]) == after0 and visual(alive[1]) == after1
    # ... a superset of the released code's sets
    assert after0 >= changed | top_by(a0, views[0], 48) | top_by(a0, views[1], 36)
    assert after1 >= changed | layer0_first_k | top_by(a1, views[0] & after0, 16) | top_by(a1, views[1] & after0, 12)
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
    ('fine', {}, 256 - 200),
    ('fine', dict(static_cap_fine=220), 256 - 200),     # fine never drops more than coarse (S8)
    ('fine', dict(static_cap_fine=150), 256 - 150),
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
    """16 patches per view (56 px): cap 200/256 -> 12 (coarse), 100/256 -> 6 (fine)."""
    layout = TokenLayout(num_cameras=2, patches_per_camera=16, has_proprio=True, prompt_len=5, num_actions=56)
    frames = random_views(0, side=56)
    for mode, kept_per_view in (('coarse', 4), ('fine', 10)):
        method = create_method('specprune', topk_coarse=(0, 0), topk_fine=(0, 0), use_global_history=False,
                               min_visual_tokens=1, static_cap_fine=100)
        attention = {0: attention_vector(0, layout.seq_len), 1: attention_vector(1, layout.seq_len)}
        infer(method, frames, attention, mode=mode, layout=layout)
        alive, _ = infer(method, frames, attention, mode=mode, layout=layout)
        assert [len(in_view(alive[0], v, layout)) for v in (0, 1)] == [kept_per_view] * 2


def test_fine_mode_keeps_a_superset_of_coarse_when_static_patches_are_under_the_caps():
    """Fine mode has the larger top-k (25/19 vs 16/12). With fewer static candidates than the cap,
    only the top-k differs: after layer 0 fine keeps every token coarse keeps and more; after
    layer 1 it keeps more (the slots are filled by the layer-1 ranking among a larger set)."""
    frames = random_views(0)
    now = altered(frames, {0: list(range(0, 200, 2)), 1: list(range(50, 130))})
    attention = {0: attention_vector(2), 1: attention_vector(3)}
    alive = {}
    for mode in ('coarse', 'fine'):
        method = create_method('specprune', use_global_history=False, min_visual_tokens=1)
        infer(method, frames, {0: attention_vector(0), 1: attention_vector(1)}, mode=mode)
        alive[mode], _ = infer(method, now, attention, mode=mode)
    assert alive['coarse'][0] < alive['fine'][0]
    assert len(alive['coarse'][1]) < len(alive['fine'][1])


def random_scene(seed: int):
    """Two views of which a random share of patches changed, and random attention per layer."""
    rng = np.random.default_rng(seed)
    frames = random_views(seed)
    changes = {v: sorted(rng.choice(256, size=int(rng.integers(0, 256)), replace=False).tolist()) for v in (0, 1)}
    return frames, altered(frames, changes, seed=seed + 1), rng


@pytest.mark.parametrize('seed', range(12))
def test_fine_keeps_at_least_what_coarse_keeps_at_every_layer_in_any_scene(seed):
    """S8: fine-grained motion is pruning-sensitive, so fine never keeps fewer tokens, at any layer
    (the released caps, 220 fine vs 200 coarse, kept fewer in static scenes)."""
    frames, now, rng = random_scene(seed)
    options = dict(static_cap_fine=int(rng.integers(0, 257)), static_cap_coarse=int(rng.integers(0, 257)),
                   topk_fine=tuple(int(k) for k in rng.integers(0, 40, 2)),
                   topk_coarse=tuple(int(k) for k in rng.integers(0, 40, 2)),
                   min_visual_tokens=int(rng.integers(1, 64)), use_global_history=bool(rng.integers(0, 2)))
    attention = {layer: attention_vector(100 * seed + layer) for layer in range(8)}
    first = {layer: attention_vector(50 * seed + layer) for layer in range(8)}
    counts = {}
    for mode in ('coarse', 'fine'):
        method = create_method('specprune', **options)
        infer(method, frames, first, mode=mode, num_layers=8)
        alive, _ = infer(method, now, attention, mode=mode, num_layers=8)
        counts[mode] = [len(kept) for kept in alive]
    assert all(f >= c for f, c in zip(counts['fine'], counts['coarse'])), counts


# ----------------------------------------------------------------------------- frame history (Δ)

def control_step_frames(count: int = 9) -> list[list[np.ndarray]]:
    """Frames of consecutive control steps: frame i differs from frame i-1 in patch i of both views."""
    frames = [random_views(0)]
    for i in range(1, count):
        frames.append(altered(frames[-1], {0: [i], 1: [i]}, seed=i))
    return frames


@pytest.mark.parametrize('speed, back', [(0.02, 5), (0.05, 4), (0.08, 3), (0.12, 2), (0.25, 1), (None, 5)])
def test_frame_compared_is_delta_control_steps_back(speed, back):
    """At realistic TCP speeds (m/s) the frame compared is Δ control steps back in the ring, so
    frame 8 against frame 8 - Δ finds exactly patches 9 - Δ .. 8 changed."""
    frames = control_step_frames()
    method = create_method('specprune', **ONLY_CHANGES)
    assert method.delta_steps(speed) == back
    asked = []

    def earlier(steps):
        asked.append(steps)
        return frames[max(8 - steps, 0)]
    alive, _ = infer(method, frames[8], {0: attention_vector(0), 1: attention_vector(1)}, speed=speed,
                     earlier=earlier)
    changed = range(9 - back, 9)
    assert asked == [back]
    assert visual(alive[0]) == positions_of(0, changed) | positions_of(1, changed)


def test_the_policy_keeps_a_ring_of_control_step_frames():
    """observe_frames every control step, infer every 8th: SpecPrune compares with Δ steps back;
    without observe_frames it compares with the previous inference's frames."""
    model, tokenizer = tiny_model_and_tokenizer(llm=dict(num_hidden_layers=3), center_crop=False)
    frames = [random_views(0, side=56)]
    for i in range(1, 17):
        frames.append(altered(frames[-1], {0: [i % 16], 1: [i % 16]}, seed=i, grid=4))
    policy = VLAPolicy(model, tokenizer, 'specprune', dict(ONLY_CHANGES, dynamic=False))
    speed = 0.08                                   # Δ = 3 control steps
    assert policy.method.delta_steps(speed) == 3
    kept = []
    for step, images in enumerate(frames):
        policy.observe_frames(images)
        if step % 8 == 0:
            kept.append(policy.infer(images, np.zeros(8), INSTRUCTIONS[0], ee_speed=speed).record.visual_tokens_kept)
    assert kept == [32, 2 * 3, 2 * 3]              # 3 changed patches per view in the last 3 steps
    policy.reset()
    kept = [policy.infer(frames[i], np.zeros(8), INSTRUCTIONS[0], ee_speed=speed).record.visual_tokens_kept
            for i in (0, 8, 16)]
    assert kept == [32, 2 * 8, 2 * 8]              # no ring: against the previous inference, 8 steps back


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
    layer0_first_k = top_by(attention[0], views[0], 16) | top_by(attention[0], views[1], 12)    # S5
    expected = set().union(*(filled(history | layer0_first_k, views[v] & alive[0], attention[1],
                                    len(history & views[v]) + 2 * k) for v, k in enumerate((16, 12))))
    assert visual(alive[1]) == expected and expected >= top1 | history | layer0_first_k
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
    views = [set(LAYOUT.camera_range(v)) for v in (0, 1)]
    per_view = math.ceil(floor / 2)                                  # the floor is split over the views
    assert visual(alive[0]) == top_by(a0, views[0], per_view) | top_by(a0, views[1], per_view)   # by attention
    assert len(visual(alive[0])) >= floor
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


class Recorder(PruningMethod):
    """Records the attention rows the model hands to ``after_layer`` at layers 0 and 1."""
    name = 'recorder'

    def __init__(self):
        super().__init__()
        self.seen = {}

    def attention_layers(self, num_layers):
        return {0, 1}

    def after_layer(self, layer, hidden, positions, layout, step, attention):
        self.seen[layer] = attention


def eager_reference(model):
    config = LlamaConfig(**model.config.llm)
    config._attn_implementation = 'eager'
    reference = LlamaModel(config).eval()
    reference.load_state_dict(model.llm.state_dict())
    return reference


@pytest.mark.parametrize('attn', ['sdpa', 'eager'])
@pytest.mark.parametrize('causal', [False, True])
def test_attention_rows_match_eager_llama_attention_weights(causal, attn):
    """The rows SpecPrune ranks by: every row after the patches to every token, mean over heads;
    with a causal model each row sees only the keys up to itself (S9). Both layer paths."""
    model, tokenizer = tiny_model_and_tokenizer(llm=dict(num_hidden_layers=3), attn_implementation=attn)
    model.config.causal = causal
    pixels, proprio, ids = example_inputs(model, tokenizer, INSTRUCTIONS[1])
    layout = model.layout(ids.shape[1] - 1)
    recorder = Recorder()
    reference = eager_reference(model)
    with torch.no_grad():
        model(pixels, proprio, ids, pruner=recorder)
        embeddings = model.embed_sequence(model.encode_images(pixels), proprio, ids)
        mask = None if causal else torch.zeros(1, 1, layout.seq_len, layout.seq_len)
        weights = reference(inputs_embeds=embeddings, attention_mask=mask, output_attentions=True).attentions
    for layer in (0, 1):
        expected = weights[layer][0, :, layout.patch_end:].mean(dim=0)
        assert recorder.seen[layer].shape == (1, layout.seq_len - layout.patch_end, layout.seq_len)
        torch.testing.assert_close(recorder.seen[layer][0], expected, atol=1e-6, rtol=0)


def test_attention_rows_of_a_padded_batch_are_each_samples_own():
    """Per sample in a padded batch (S9): the same rows as the sample alone, padding keys at zero."""
    from vla_prune_ros.model.processing import pad_prompts
    model, tokenizer = tiny_model_and_tokenizer(llm=dict(num_hidden_layers=3))
    samples = [example_inputs(model, tokenizer, instruction, seed) for seed, instruction in enumerate(INSTRUCTIONS)]
    ids, padding = pad_prompts([sample[2][0].tolist() for sample in samples], model.config)
    alone = []
    with torch.no_grad():
        for sample in samples:
            recorder = Recorder()
            model(*sample, pruner=recorder)
            alone.append(recorder.seen[0][0])
        recorder = Recorder()
        model(torch.cat([s[0] for s in samples]), torch.cat([s[1] for s in samples]), ids, prompt_padding=padding,
              pruner=recorder)
    together = recorder.seen[0]
    layout = model.layout(ids.shape[1] - 1)
    pads = int(padding[0].sum())
    keep = [i for i in range(layout.seq_len) if not (layout.prompt_start <= i <= layout.readout_index
                                                     and bool(padding[0, i - layout.prompt_start]))]
    rows = [i - layout.patch_end for i in keep if i >= layout.patch_end]
    torch.testing.assert_close(together[0][rows][:, keep], alone[0], atol=1e-6, rtol=0)
    assert pads > 0 and float(together[0][:, [i for i in range(layout.seq_len) if i not in keep]].abs().max()) == 0
    torch.testing.assert_close(together[1], alone[1], atol=1e-6, rtol=0)


def test_specprune_refuses_a_batch():
    model, tokenizer = tiny_model_and_tokenizer()
    pixels, proprio, ids = example_inputs(model, tokenizer)
    step = InferenceStep(frames=random_frames(model.config))
    with pytest.raises(ValueError, match='one observation per call'):
        model(pixels.repeat(2, 1, 1, 1), proprio.repeat(2, 1), ids.repeat(2, 1), pruner=create_method('specprune'),
              step=step)


def test_instruction_rows_skip_the_template_and_importance_uses_every_row_after_the_patches():
    """S1: the top-k ranks by the instruction's own rows (template skipped); S2: the importance EMA
    ranks by every row after the patches and starts from zero."""
    layout = TokenLayout(num_cameras=1, patches_per_camera=16, has_proprio=True, prompt_len=14, num_actions=7)
    rows = layout.seq_len - layout.patch_end
    template = 10
    patches = list(range(layout.patch_start, layout.patch_end))
    instruction_first = layout.prompt_start + template - layout.patch_end
    # Template rows favour patches 0-3, instruction rows 8-11, every row 12-15 (so all rows together: 12-15).
    attention = torch.full((1, rows, layout.seq_len), 0.01)
    attention[0, :, patches[12:]] = 0.5
    attention[0, layout.prompt_start - layout.patch_end:instruction_first, patches[:4]] = 0.3
    attention[0, instruction_first:layout.readout_index + 1 - layout.patch_end, patches[8:12]] = 1.0
    method = create_method('specprune', topk_coarse=(64,), static_cap_coarse=256, use_global_history=False,  # 4 of 16
                           min_visual_tokens=1, similarity_threshold=0.0, layer0_topk_multiplier=1)
    frames = [np.full((56, 56, 3), 100, dtype=np.uint8)]
    step = InferenceStep(frames=frames, template_tokens=template, earlier_frames=lambda steps: frames)
    positions = torch.arange(layout.seq_len)
    method.attention_layers(32)
    method.before_llm(torch.zeros(1, layout.seq_len, 8), positions, layout, step)
    result = method.after_layer(0, None, positions, layout, step, attention)
    kept = set(kept_positions(result, positions, layout).tolist()) & set(patches)
    assert kept == set(patches[8:12])            # every patch static: only the instruction rows' top 4 stay
    # importance: one update from zero, ranks by the mean over all rows (patches 12-15 highest)
    importance = method._state.importance[patches]
    assert float(importance.sum()) > 0 and set(importance.topk(4).indices.tolist()) == {12, 13, 14, 15}
    alpha = method.options.ema_alpha
    assert float(importance.max()) == pytest.approx(alpha * 1.0)      # (1 - α)·0 + α·rank, rank 1 at the top


def test_policy_prunes_static_patches_and_reset_starts_a_new_episode():
    model, tokenizer = tiny_model_and_tokenizer(llm=dict(num_hidden_layers=3), center_crop=False)
    policy = VLAPolicy(model, tokenizer, 'specprune', dict(ONLY_CHANGES, dynamic=False))
    frames = random_views(0, side=56)
    moved = altered(frames, {0: [5], 1: [2, 9]}, grid=4)
    proprio = np.zeros(8)
    first = policy.infer(frames, proprio, INSTRUCTIONS[0], ee_speed=0.0)
    second = policy.infer(moved, proprio, INSTRUCTIONS[0], ee_speed=0.0)
    third = policy.infer(moved, proprio, INSTRUCTIONS[0], ee_speed=0.0)
    # 2 = the floor of 1, split over the two views (at least one each)
    assert [r.record.visual_tokens_kept for r in (first, second, third)] == [32, 3, 2]
    non_visual = second.record.tokens_total - 32
    assert second.record.layer_tokens == [non_visual + 32, non_visual + 3, non_visual + 3]
    policy.reset()
    assert policy.infer(moved, proprio, INSTRUCTIONS[0]).record.visual_tokens_kept == 32


def test_template_tokens_are_derived_from_the_tokenised_template():
    """S1: the instruction rows start right after the template's own tokens, whatever the tokenizer."""
    from vla_prune_ros.model.processing import prompt_ids, template_tokens
    model, tokenizer = tiny_model_and_tokenizer()
    for instruction in INSTRUCTIONS:
        ids = prompt_ids(tokenizer, instruction, model.config)
        count = template_tokens(tokenizer, instruction, model.config)
        assert tokenizer.convert_ids_to_tokens(ids[:count]) == ['in', ':', 'what', 'action', 'should', 'the',
                                                                 'robot', 'take', 'to']
        assert tokenizer.convert_ids_to_tokens(ids[count:count + 1]) == [instruction.split()[0]]
