"""Can the default policy's architecture learn *where* the instructed cube is, given only that target?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/localisation_probe.py runs/policy/demos --variant default \
        --steps 400 --json benchmarks/localisation_probe_default.json

The bundled policy's first chunk is no better than the mean chunk (grounding_probe.*), and in training
the privileged target head's miss stays at the mean predictor's. This trains the sim-small model
(FiLM, from scratch, bf16 autocast, AdamW as ``scripts/train_default_policy.sh``) on the privileged
target alone: no action loss. Every ``--every`` steps it reports the held-out xy miss (mm) of the target
cube relative to the TCP, against the mean predictor's miss on the same samples. Variants:
  default   the target head on the mean read-out hidden state (what training uses),
  sincos    the same, the ViT position embeddings started from a 2-D sin-cos table,
  patches   the target head on the mean of the patch tokens after the LLM (skips the read-out path),
  world     the default head, but the target cube's xy in the world frame (no TCP to subtract: the
            images alone; the primary camera is fixed),
  patch8    the default, with 8 px patches (a 14 x 14 grid per camera instead of 8 x 8; 3x the tokens),
  far       the default, with samples whose target is over 60 mm away in xy drawn 4x as often,
  pointing  the default plus the recipe's training-only pointing loss (weight 1, entering LLM layer 2),
  convstem  the default with a small convolutional stem (3x3 stride 2, 3x3, 7x7 stride 7) in place of
            the linear 14 px patch embedding: the same 8 x 8 patch tokens.
bf16 autocast only where the CPU has it natively (``training.native_bf16``); emulated, it is ~10x slower.
At the end it reports where the far held-out predictions land (``far_attribution``): on the named cube,
another cube, a pad, or nothing, which tells a grounding failure from a position the images do not give.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vla_prune_ros.auxiliary import PRIVILEGED_SCALE, PointingHead, TargetHead
from vla_prune_ros.data.demonstrations import FAR_TARGET_MM, dataset_statistics, load_episodes
from vla_prune_ros.model.configuration_vla import OFT_PROMPT
from vla_prune_ros.model.modeling_vla import VLAModel
from vla_prune_ros.model.tokenizer import build_word_tokenizer, prompt_words
from vla_prune_ros.training import Batches, init_sincos_positions, native_bf16, sim_small_config

VARIANTS = ('default', 'sincos', 'patches', 'world', 'patch8', 'far', 'pointing', 'convstem')
NEAR_OBJECT_MM = 40   # a prediction this close to an object is "on" it (cubes start >= 90 mm apart)


class ConvStem(torch.nn.Sequential):
    @property
    def weight(self):   # SiglipVisionEmbeddings casts the pixels to the stem's dtype
        return self[0].weight


def xy_misses_mm(predicted: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    return (predicted[:, :2] - target[:, :2]).norm(dim=1).numpy() * PRIVILEGED_SCALE * 1000


def xy_miss_mm(predicted: torch.Tensor, target: torch.Tensor) -> float:
    return float(xy_misses_mm(predicted, target).mean())


def miss_shape(misses: np.ndarray, distances: np.ndarray) -> dict:
    """A mean of ~a patch is either every sample off by a patch (resolution) or a few off by a cube's
    spacing (the wrong cube: grounding); the median and the tails tell which, and the mean over samples
    whose target is more than FAR_TARGET_MM away in xy."""
    far = distances > FAR_TARGET_MM
    return {'median_mm': float(np.median(misses)), 'p90_mm': float(np.percentile(misses, 90)),
            'within_15mm': float(np.mean(misses <= 15)), 'beyond_60mm': float(np.mean(misses > 60)),
            'far_share': float(np.mean(far)), 'far_mean_mm': float(misses[far].mean()) if far.any() else None}


def far_attribution(predicted: torch.Tensor, drawn, source: Batches, episodes, distances, world: bool) -> dict:
    """Which object each far prediction lands on: the named cube, another cube, a pad (pads share the
    cubes' colours), or nothing within NEAR_OBJECT_MM. Wrong objects mean grounding; nothing means
    the position itself is not read from the image. Scenes are redrawn from the episode seeds."""
    from vla_prune_ros.sim.tasks import sample_task
    counts = {'named_cube': 0, 'other_cube': 0, 'pad': 0, 'nothing': 0}
    for row, (episode, t) in enumerate(drawn):
        if distances[row] <= FAR_TARGET_MM:
            continue
        spec = sample_task(np.random.default_rng(episodes[episode].seed), episodes[episode].task)
        guess = predicted[row, :2].numpy() * PRIVILEGED_SCALE + (0 if world else source.raw_proprio[episode][t][:2])
        objects = [('named_cube' if i == 0 else 'other_cube', xy) for i, xy in enumerate(spec.cube_positions)]
        objects += [('pad', xy) for xy in spec.pad_positions]
        gaps = [np.linalg.norm(guess - xy) * 1000 for _, xy in objects]
        nearest = int(np.argmin(gaps))
        counts[objects[nearest][0] if gaps[nearest] <= NEAR_OBJECT_MM else 'nothing'] += 1
    total = max(1, sum(counts.values()))
    return {name: round(count / total, 3) for name, count in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('data', type=Path)
    parser.add_argument('--variant', choices=VARIANTS, default='default')
    parser.add_argument('--episodes', type=int, default=600, help='the first N for training, the next 100 held out')
    parser.add_argument('--steps', type=int, default=400)
    parser.add_argument('--every', type=int, default=50)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=float, default=7e-4)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', type=Path)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    meta, episodes = load_episodes(args.data, limit=args.episodes + 100, frame_size=112)
    train_eps, held_out = episodes[:args.episodes], episodes[args.episodes:]
    stats = dataset_statistics(train_eps)
    tokenizer = build_word_tokenizer(prompt_words(OFT_PROMPT, sorted({e.instruction for e in episodes})))
    config = sim_small_config(len(tokenizer), stats, meta['camera_names'], meta['action_names'], 112, film=True)
    if args.variant == 'patch8':
        config.vision.patch_size = 8
    model = VLAModel(config)
    if args.variant == 'sincos':
        init_sincos_positions(model)
    if args.variant == 'convstem':
        from vla_prune_ros.model.modeling_vla import ViTFeatures
        for module in model.modules():
            if isinstance(module, ViTFeatures):
                width = module.embeddings.patch_embedding.out_channels
                module.embeddings.patch_embedding = ConvStem(
                    torch.nn.Conv2d(3, 32, 3, stride=2, padding=1), torch.nn.GELU(),
                    torch.nn.Conv2d(32, 32, 3, stride=1, padding=1), torch.nn.GELU(),
                    torch.nn.Conv2d(32, width, 7, stride=7))
    batches = Batches(train_eps, config, tokenizer, seed=args.seed,
                      camera_geometry=meta['camera_geometry'] if args.variant == 'pointing' else None)
    held_out_batches = Batches(held_out, config, tokenizer, seed=args.seed + 1, augment=False)
    # The same count from the training episodes, unaugmented: held-out far above it means too few scenes.
    training_batches = Batches(train_eps, config, tokenizer, seed=args.seed + 2, augment=False)
    # The same held-out draws, kept relative to the TCP: a sample is "far" by its cube - TCP distance in
    # every variant, so the world variant's far mean reads against the others'.
    distances = xy_misses_mm(torch.zeros(256, 3), Batches(held_out, config, tokenizer, seed=args.seed + 1,
                                                          augment=False).sample(256, 'cpu')['privileged'])
    if args.variant == 'world':
        for source in (batches, held_out_batches, training_batches):   # cube - TCP, plus the TCP: the cube in the world
            source.privileged = [np.concatenate([p[:, :2] + tcp[:, :2], p[:, 2:]], axis=1)
                                 for p, tcp in zip(source.privileged, source.raw_proprio)]
    if args.variant == 'far':
        batches.weight_far_targets(4.0)
    evaluation = held_out_batches.sample(256, 'cpu')
    evaluation_drawn = held_out_batches.last_drawn
    # The true targets must land on the named cube, or the redrawn scenes do not match the episodes.
    truth = far_attribution(evaluation['privileged'], evaluation_drawn, held_out_batches, held_out, distances,
                            args.variant == 'world')
    assert truth['named_cube'] >= 0.95, f'redrawn scenes do not match the recorded targets: {truth}'
    training_sample = training_batches.sample(256, 'cpu')
    mean_target = torch.tensor(np.concatenate(batches.privileged).mean(0) / PRIVILEGED_SCALE, dtype=torch.float32)
    baseline_misses = xy_misses_mm(mean_target.expand_as(evaluation['privileged']), evaluation['privileged'])
    baseline = float(baseline_misses.mean())
    baseline_shape = miss_shape(baseline_misses, distances)
    print(f'mean predictor on the held-out samples: {baseline_shape}', flush=True)
    head = TargetHead(model.hidden_size, batches.privileged[0].shape[1])
    patch_states = {}
    if args.variant == 'patches':
        model.llm.norm.register_forward_hook(lambda module, inputs, output: patch_states.update(h=output))
    pointing = PointingHead(model.hidden_size)
    if args.variant == 'pointing':
        model.llm.layers[2].input_layernorm.register_forward_hook(
            lambda module, inputs, output: patch_states.update(pointing=output))
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()) + list(pointing.parameters()),
                                  lr=args.lr, weight_decay=0.0)

    bf16 = native_bf16(False)   # emulated bf16 (AVX2 only) is ~10x slower than fp32

    def predict(batch):
        with torch.autocast('cpu', torch.bfloat16, enabled=bf16):
            _, readout = model(batch['pixels'], batch['proprio'], batch['ids'], batch['padding'], return_readout=True)
            if args.variant == 'patches':
                layout = model.layout(batch['ids'].shape[1] - 1)
                readout = patch_states['h'][:, layout.patch_start:layout.patch_end]
            return head(readout).float()

    curve, started = [], time.time()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            model.eval()
            with torch.no_grad():
                held_misses = xy_misses_mm(predict(evaluation), evaluation['privileged'])
                held = float(held_misses.mean())
                seen = xy_miss_mm(predict(training_sample), training_sample['privileged'])
            model.train()
            curve.append({'step': step, 'minutes': round((time.time() - started) / 60, 2), 'held_out_miss_mm': held,
                          'training_miss_mm': seen, 'held_out': miss_shape(held_misses, distances)})
            print(f"{args.variant} step {step}: held-out xy miss {held:.1f} mm, training {seen:.1f} "
                  f"(mean predictor {baseline:.1f}); held-out {curve[-1]['held_out']}", flush=True)
        if step == args.steps:
            break
        warmup = min(1.0, (step + 1) / 100)
        for group in optimizer.param_groups:
            group['lr'] = args.lr * warmup
        batch = batches.sample(args.batch_size, 'cpu')
        loss = torch.nn.functional.l1_loss(predict(batch), batch['privileged'])
        if args.variant == 'pointing':
            layout = model.layout(batch['ids'].shape[1] - 1)
            loss = loss + pointing.loss(patch_states['pointing'][:, layout.patch_start:layout.patch_end],
                                        batch['target_patches'])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        attribution = far_attribution(predict(evaluation), evaluation_drawn, held_out_batches, held_out, distances,
                                      args.variant == 'world')
    print(f'far held-out predictions land on: {attribution}', flush=True)
    result = {'variant': args.variant, 'far_attribution': attribution, 'data': str(args.data),
              'episodes': args.episodes, 'steps': args.steps,
              'mean_predictor_miss_mm': baseline, 'mean_predictor_held_out': baseline_shape, 'curve': curve}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + '\n')


if __name__ == '__main__':
    main()
