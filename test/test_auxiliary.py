"""Training-only pointing targets: camera projection, patch labels after the crop, the loss."""
import numpy as np
import pytest
import torch

from vla_prune_ros.auxiliary import PatchPositionHead, PointingHead, target_patch
from vla_prune_ros.sim.cameras import camera_geometry, project
from vla_prune_ros.sim.env import TabletopEnv
from vla_prune_ros.sim.expert import ScriptedExpert
from vla_prune_ros.sim.scene import COLOURS


def _is_colour(pixel, colour: str) -> bool:
    """Hue match, tolerant of shading: the target's dominant channels dominate this pixel too."""
    reference = np.array(COLOURS[colour][:3])
    pixel = np.asarray(pixel, dtype=float) / 255.0
    return bool(np.corrcoef(reference, pixel)[0, 1] > 0.9)


@pytest.fixture(scope='module')
def env():
    with TabletopEnv(image_size=128) as environment:
        yield environment


@pytest.mark.parametrize('task, seed', [('touch', 11), ('push', 12), ('touch', 13)])
def test_the_projected_target_cube_is_where_the_camera_renders_it(env, task, seed):
    geometry = camera_geometry(env)
    obs = env.reset(task=task, seed=seed)
    expert = ScriptedExpert(env)
    checked = 0
    for _ in range(14):
        cube = env.target_cube_position()
        for camera in ('primary', 'wrist'):
            uv = project(geometry[camera], cube, obs.proprio[:3], obs.proprio[3:6])
            if uv is None or not (0 <= uv[0] < 1 and 0 <= uv[1] < 1):
                continue
            row, column = int(uv[1] * 128), int(uv[0] * 128)
            assert _is_colour(obs.images[camera][row, column], env.task.target_cube), (camera, uv)
            checked += 1
        obs = env.step(expert.act(obs))
    assert checked >= 14     # the primary camera sees the cube at every step


def test_target_patch_follows_the_crop():
    assert target_patch((0.5, 0.5), (0.0, 0.0, 1.0, 1.0), 8) == 4 * 8 + 4
    assert target_patch((0.01, 0.99), (0.0, 0.0, 1.0, 1.0), 8) == 7 * 8 + 0
    # A crop starting at x = 0.5 moves a point at x = 0.6 to the crop's left fifth.
    assert target_patch((0.6, 0.5), (0.0, 0.5, 1.0, 1.0), 8) == 4 * 8 + 1
    assert target_patch((0.4, 0.5), (0.0, 0.5, 1.0, 1.0), 8) == -1
    assert target_patch(None, (0.0, 0.0, 1.0, 1.0), 8) == -1


def test_pointing_loss_ignores_targets_out_of_view_and_rewards_the_right_patch():
    head = PointingHead(hidden_size=4, targets=2)
    with torch.no_grad():
        head.net.weight.zero_()
        head.net.bias.zero_()
        head.net.weight[0, 0] = 10.0          # target 0 lights up where feature 0 is set
    hidden = torch.zeros(1, 2 * 3, 4)       # 2 cameras x 3 patches
    hidden[0, 1, 0] = 1.0                   # camera 0, patch 1
    hidden[0, 5, 0] = 1.0                   # camera 1, patch 2
    right = torch.tensor([[[1, -1], [2, -1]]])
    wrong = torch.tensor([[[0, -1], [0, -1]]])
    assert head.loss(hidden, right) < 0.01 < head.loss(hidden, wrong)
    assert head.loss(hidden, torch.full((1, 2, 2), -1)) == 0.0


def test_training_batches_label_the_patch_that_shows_the_instructed_cube(tmp_path):
    from vla_prune_ros.data.demonstrations import dataset_statistics, load_episodes
    from vla_prune_ros.model.configuration_vla import OFT_PROMPT
    from vla_prune_ros.model.tokenizer import build_word_tokenizer, prompt_words
    from vla_prune_ros.sim.collect import collect
    from vla_prune_ros.training import Batches, sim_small_config

    collect(tmp_path, episodes=2, seed=3, perturb_std=0.004)
    meta, episodes = load_episodes(tmp_path)
    tokenizer = build_word_tokenizer(prompt_words(OFT_PROMPT, sorted({e.instruction for e in episodes})))
    config = sim_small_config(len(tokenizer), dataset_statistics(episodes), meta['camera_names'], meta['action_names'])
    batches = Batches(episodes, config, tokenizer, seed=0, camera_geometry=meta['camera_geometry'])
    batch = batches.sample(24, 'cpu')
    size, patch = config.vision.image_size, config.vision.patch_size
    grid = size // patch
    checked = 0
    for i in range(24):
        ids = batch['ids'][i].tolist()
        words = [tokenizer.convert_ids_to_tokens(t) for t in ids]
        colour = words[words.index('cube') - 1]
        for camera in range(2):
            index = int(batch['target_patches'][i, camera, 0])
            if index < 0:
                continue
            row, column = divmod(index, grid)
            pixels = batch['pixels'][i, 3 * camera:3 * camera + 3, row * patch:(row + 1) * patch,
                                     column * patch:(column + 1) * patch] * 0.5 + 0.5
            pixels = (pixels.permute(1, 2, 0).reshape(-1, 3).numpy() * 255)
            assert any(_is_colour(p, colour) for p in pixels), (i, camera, colour)
            checked += 1
    assert checked >= 24


def test_plane_points_invert_the_projection_for_both_cameras(env):
    from vla_prune_ros.sim.cameras import plane_points
    geometry = camera_geometry(env)
    obs = env.reset(task='touch', seed=21)
    rng = np.random.default_rng(0)
    for camera in ('primary', 'wrist'):
        points = np.column_stack([rng.uniform(0.3, 0.55, 16), rng.uniform(-0.2, 0.2, 16), np.full(16, 0.02)])
        uv = np.array([project(geometry[camera], p, obs.proprio[:3], obs.proprio[3:6]) for p in points])
        back = plane_points(geometry[camera], uv, obs.proprio[:3], obs.proprio[3:6], 0.02)
        np.testing.assert_allclose(back, points, atol=1e-9)
    # A ray pointing away from the plane has no point on it.
    up = plane_points(geometry['primary'], np.array([[0.5, 0.5]]), obs.proprio[:3], obs.proprio[3:6], 10.0)
    assert np.isnan(up).all()


@pytest.mark.parametrize('seed', [31, 32, 33])
def test_the_patch_showing_the_target_cube_is_placed_next_to_it(env, seed):
    from vla_prune_ros.auxiliary import PRIVILEGED_SCALE, WORKSPACE_CENTRE, patch_positions
    from vla_prune_ros.model.processing import center_crop_box
    from vla_prune_ros.sim.cameras import plane_points
    geometry = camera_geometry(env)
    obs = env.reset(task='touch', seed=seed)
    cube, tcp = env.target_cube_position(), obs.proprio[:3]
    box, grid = center_crop_box(), 8
    for camera, origin in (('primary', WORKSPACE_CENTRE), ('wrist', tcp[:2])):
        index = target_patch(project(geometry[camera], cube, tcp, obs.proprio[3:6]), box, grid)
        if index < 0:
            continue
        table = patch_positions(geometry[camera], box, grid, tcp, obs.proprio[3:6], 0.02, plane_points)
        placed = table[index] * PRIVILEGED_SCALE + origin
        assert np.linalg.norm(placed - cube[:2]) < 0.04, camera     # within a patch's footprint
        others = np.linalg.norm(table * PRIVILEGED_SCALE + origin - cube[:2], axis=1)
        assert np.nanargmin(others) in (index, index - 1, index + 1, index - grid, index + grid)


def test_training_batches_carry_patch_positions(tmp_path):
    from vla_prune_ros.data.demonstrations import dataset_statistics, load_episodes
    from vla_prune_ros.model.configuration_vla import OFT_PROMPT
    from vla_prune_ros.model.tokenizer import build_word_tokenizer, prompt_words
    from vla_prune_ros.sim.collect import collect
    from vla_prune_ros.training import Batches, sim_small_config

    collect(tmp_path, episodes=2, seed=4, perturb_std=0.004)
    meta, episodes = load_episodes(tmp_path)
    tokenizer = build_word_tokenizer(prompt_words(OFT_PROMPT, sorted({e.instruction for e in episodes})))
    config = sim_small_config(len(tokenizer), dataset_statistics(episodes), meta['camera_names'], meta['action_names'])
    batches = Batches(episodes, config, tokenizer, seed=0, camera_geometry=meta['camera_geometry'],
                      patch_positions=True)
    positions = batches.sample(8, 'cpu')['patch_positions']
    assert positions.shape == (8, config.num_visual_tokens, 2)
    primary = positions[:, :config.num_visual_tokens // 2, 0]
    assert torch.isfinite(primary).float().mean() > 0.9      # the fixed camera looks at the table
    head = PatchPositionHead(hidden_size=4)
    assert torch.isfinite(head.loss(torch.zeros(8, config.num_visual_tokens, 4), positions))


def test_privileged_targets_are_read_by_name(tmp_path):
    """A collection that recorded extra privileged targets, in another order, yields PRIVILEGED_NAMES' columns."""
    from vla_prune_ros.data.demonstrations import PRIVILEGED_NAMES, load_episodes, write_episode, write_meta

    recorded = ['extra_a'] + list(reversed(PRIVILEGED_NAMES)) + ['extra_b']
    values = np.arange(3 * len(recorded), dtype=np.float32).reshape(3, len(recorded))
    write_meta(tmp_path, {'camera_names': ['primary'], 'privileged_names': recorded})
    write_episode(tmp_path, 0, {'primary': np.zeros((3, 8, 8, 3))}, np.zeros((3, 8)), np.zeros((3, 7)),
                  'touch the red cube', True, privileged=values)
    _, (episode,) = load_episodes(tmp_path)
    expected = values[:, [recorded.index(name) for name in PRIVILEGED_NAMES]]
    np.testing.assert_array_equal(episode.privileged, expected)

    write_meta(tmp_path, {'camera_names': ['primary'], 'privileged_names': ['extra_a', 'cube_dx']})
    with pytest.raises(ValueError, match='were not recorded'):
        load_episodes(tmp_path)
