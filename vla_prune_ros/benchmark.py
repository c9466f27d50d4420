"""The benchmark behind ``vla-prune bench``: every method against the unpruned baseline, measured in the same run.

All methods share one model and see the same realistic frame sequence: an expert episode of the
simulated arm rendered at the model's resolution, every control step. Each policy observes every
step's frames (its frame ring, for SpecPrune's Δ); the measured TCP twist of each step drives a
``CoarseFineController`` exactly as in the node, and every ``chunk_len`` steps each method infers
with the controller's mode and the measured speed. Calls are interleaved method by method, after
warm-up; latency is the median over inferences. Ratios are always against ``none`` from this run.

Besides each method's own behaviour, the papers' operating points are run with the kept token
counts forced (``*@paper``): SpecPrune ≈ 285 tokens after static pruning then a further ≈ 19 %
dynamic; LightVLA ≈ 78 visual tokens. The model has random weights, so ``lightvla_star`` runs with
random (not trained) queries, labelled ``lightvla_star@random-queries``.

``efficiency`` is the measured speed-up over the one the FLOP cut predicts. ``efficiency_ceiling`` is
what a method with free pruning and an LLM time exactly proportional to its FLOPs would reach in the
same run: the stages no method prunes (preprocessing, vision, head) cost more time per FLOP than the
LLM's large matrix products, so the FLOP prediction overstates every speed-up by that much.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from .model.configuration_vla import (IMAGENET_MEAN, IMAGENET_STD, BackboneConfig, NormStats, VisionConfig,
                                      VLAConfig)
from .model.flops import forward_flops, llm_layer_flops
from .model.modeling_vla import VLAModel, count_parameters
from .model.tokenizer import READOUT_ID, build_word_tokenizer, prompt_words
from .policy import VLAPolicy

INSTRUCTION = 'push the blue cube onto the green pad'


def preset_config(name: str, attn_implementation: str = 'sdpa') -> VLAConfig:
    """``oft-scaled``: OFT's token layout (2 cameras x 256 patches, ~600 LLM tokens), fused
    DINOv2-reg + SigLIP, and a Llama with 7B's width-to-depth ratio (4096/32 = 1024/8) and
    head size 128; ViTs sized so vision's share of FLOPs is close to OFT's. ``oft-32``: the same
    layout and ViTs with OFT's 32 layers, narrowed to 512 (head size 128, MLP ratio 2.6875 as
    Llama-2-7B) to fit this CPU, so layer 0 is 1/32 of the LLM as in OFT. ``tiny``: for tests.
    """
    stats = dict(action_norm=NormStats([-1.0] * 7, [1.0] * 7, [True] * 6 + [False]),
                 proprio_norm=NormStats([-1.0] * 8, [1.0] * 8))
    if name in ('oft-scaled', 'oft-32'):
        vit = dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024)
        vision = VisionConfig(image_size=224, patch_size=14, backbones=[
            BackboneConfig(type='dinov2_reg', num_register_tokens=4, mean=IMAGENET_MEAN, std=IMAGENET_STD, **vit),
            BackboneConfig(type='siglip', **vit)])
        if name == 'oft-scaled':
            llm = dict(vocab_size=512, hidden_size=1024, intermediate_size=2752, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048, rms_norm_eps=1e-6)
        else:
            llm = dict(vocab_size=512, hidden_size=512, intermediate_size=1376, num_hidden_layers=32,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-6)
    elif name == 'tiny':
        vision = VisionConfig(image_size=112, patch_size=14, backbones=[BackboneConfig(
            type='siglip', hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)])
        llm = dict(vocab_size=128, hidden_size=64, intermediate_size=172, num_hidden_layers=4,
                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6)
    else:
        raise ValueError(f"unknown preset '{name}' ({', '.join(PRESETS)})")
    return VLAConfig(vision=vision, llm=llm, readout_token_id=READOUT_ID, attn_implementation=attn_implementation,
                     **stats)


PRESETS = ('oft-scaled', 'oft-32', 'tiny')


@dataclass
class ControlStep:
    """One control step of the recorded episode: the frames and the measured TCP twist."""
    images: list[np.ndarray]
    linear: np.ndarray
    angular: np.ndarray
    stamp: float


def control_steps(count: int, size: int, seed: int) -> list[ControlStep]:
    """``count`` consecutive control steps of the simulated expert pushing a cube."""
    from .sim.env import TabletopEnv
    from .sim.expert import ScriptedExpert
    from .sim.scene import CAMERA_NAMES
    steps = []
    with TabletopEnv(image_size=size, seed=seed) as env:
        obs = env.reset(task='push', seed=seed)
        expert = ScriptedExpert(env, seed=seed)
        expert.reset(seed=seed)
        while len(steps) < count:
            steps.append(ControlStep([obs.images[name] for name in CAMERA_NAMES], np.array(obs.tcp_linear_velocity),
                                     np.array(obs.tcp_angular_velocity), float(obs.time)))
            obs = env.step(expert.act(obs))
            if obs.success:         # keep going on a fresh scene so the sequence stays realistic
                obs = env.reset(task='push', seed=seed + len(steps))
                expert.reset(seed=seed + len(steps))
    return steps


def method_specs(methods: list[str], paper_points: bool, config: VLAConfig, prompt_tokens: int
                 ) -> list[tuple[str, str, dict]]:
    specs = [(name, name, {}) for name in methods]
    if paper_points:
        non_visual = 1 + int(config.proprio_dim > 0) + prompt_tokens + config.num_actions + 1
        if 'specprune' in methods:
            # SpecPrune: ~285 of ~600 tokens after static pruning, then a further ~19 % by dynamic pruning.
            specs.append(('specprune@paper', 'specprune', {'forced_static_visual': max(1, 285 - non_visual)}))
        if 'lightvla' in methods:
            specs.append(('lightvla@paper', 'lightvla', {'forced_visual_keep': 78}))
    # Random weights: LightVLA*'s queries are random too (not trained); the label says so.
    return [(f'{label}@random-queries' if method == 'lightvla_star' else label, method, options)
            for label, method, options in specs]


def run(args: argparse.Namespace) -> dict:
    from .control.controller import CoarseFineController
    from .evaluation import sim_controller_config
    load_before = os.getloadavg()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = preset_config(args.preset, args.attn)
    tokenizer = build_word_tokenizer(prompt_words(config.prompt_template, [INSTRUCTION]))
    config.llm['vocab_size'] = max(config.llm['vocab_size'], len(tokenizer))
    model = VLAModel(config).eval().to(getattr(args, 'device', 'cpu'))
    if getattr(args, 'compile', False):
        model.use_compiled_layers()      # the warm-up frames compile (one graph per layer kind)
    chunk = config.chunk_len
    steps = control_steps((args.frames + args.warmup) * chunk, config.vision.image_size, args.seed)
    base = VLAPolicy(model, tokenizer, 'none')
    prompt_tokens = base._prompt(INSTRUCTION).shape[1]
    specs = method_specs(args.methods.split(','), not args.no_paper_points, config, prompt_tokens)
    policies = {label: VLAPolicy(model, tokenizer, method, options) for label, method, options in specs}
    for policy in policies.values():
        if policy.method.name == 'lightvla_star':
            generator = torch.Generator().manual_seed(args.seed)
            queries = policy.method.ensure_queries(config.num_visual_tokens, model.hidden_size).queries
            with torch.no_grad():
                queries.copy_(torch.randn(queries.shape, generator=generator))
    controller = CoarseFineController(sim_controller_config())
    samples: dict[str, list] = {label: [] for label in policies}
    modes = []
    for index, step in enumerate(steps):
        decision = controller.step(step.linear, step.angular, index % chunk != 0, step.stamp)
        for policy in policies.values():
            policy.observe_frames(step.images)
        if index % chunk:
            continue
        modes.append(decision.mode)
        speed = float(np.linalg.norm(step.linear))
        for label, policy in policies.items():      # interleaved: every method sees every frame in turn
            out = policy.infer(step.images, np.zeros(config.proprio_dim), INSTRUCTION, mode=decision.mode,
                               ee_speed=speed)
            if index // chunk >= args.warmup:
                samples[label].append(out.record)
    results = summarise(samples, config)
    results['meta'] = {
        'command': args.command, 'preset': args.preset, 'attn': args.attn, 'device': str(base.device),
        'compiled_layers': model.compiled_layers,
        'torch_threads': torch.get_num_threads(), 'frames': args.frames, 'warmup': args.warmup,
        'parameters': count_parameters(model), 'sequence_length': samples['none'][0].tokens_total if 'none' in samples
        else None, 'vision_flops_share': vision_share(config, samples),
        'llm_layers': config.llm['num_hidden_layers'], 'fine_inferences': modes[args.warmup:].count('fine'),
        'inferences': len(modes[args.warmup:]),
        'load_average_1min_before_after': [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        'mode_source': 'CoarseFineController on the measured TCP twist of every control step (config/sim_robot.yaml)',
        'machine': f'{platform.machine()} {platform.processor() or ""}'.strip(), 'torch': torch.__version__,
        'date': time.strftime('%Y-%m-%d')}
    return results


def vision_share(config: VLAConfig, samples) -> float:
    layers = config.llm['num_hidden_layers']
    full = samples.get('none')
    tokens = full[0].tokens_total if full else 600
    flops = forward_flops(config, [tokens] * layers)
    return flops.vision / flops.total


def summarise(samples: dict[str, list], config: VLAConfig) -> dict:
    def median(values):
        return float(statistics.median(values))

    rows = {}
    for label, records in samples.items():
        stage_names = [name for name, _ in records[0].stages]
        rows[label] = {
            'method': records[0].method,
            'latency_ms': 1000 * median([r.timings['total'] for r in records]),
            'llm_ms': 1000 * median([r.timings['llm'] for r in records]),
            'pruning_ms': 1000 * median([r.timings['pruning'] for r in records]),
            'tokens_total': records[0].tokens_total,
            'tokens_into_llm': median([r.tokens_into_llm for r in records]),
            'visual_tokens_last_layer': median([r.visual_tokens_kept for r in records]),
            'mean_tokens_per_layer': median([float(np.mean(r.layer_tokens)) for r in records]),
            'layer_tokens': [median([r.layer_tokens[i] for r in records]) for i in range(len(records[0].layer_tokens))],
            'stages': {name: median([dict(r.stages).get(name, 0) for r in records]) for name in stage_names},
            'gflops': median([r.flops for r in records]) / 1e9,
            'llm_gflops': median([sum(llm_layer_flops(config, int(n)) for n in r.layer_tokens)
                                  for r in records]) / 1e9,
        }
    base = rows.get('none')
    for row in rows.values():
        if base is None:
            continue
        row['latency_speedup'] = base['latency_ms'] / row['latency_ms']
        row['flops_ratio'] = row['gflops'] / base['gflops']
        row['flops_speedup'] = base['gflops'] / row['gflops']
        row['efficiency'] = row['latency_speedup'] / row['flops_speedup']
        row['pruning_share'] = row['pruning_ms'] / row['latency_ms']
        row['efficiency_ceiling'] = efficiency_ceiling(row, base)
    return {'methods': rows}


def efficiency_ceiling(row: dict, base: dict) -> float:
    """The efficiency a method with free pruning and an LLM time exactly proportional to its FLOPs would
    reach in this run: the stages pruning never touches (preprocessing, vision, head) keep ``none``'s
    measured time, which the FLOP prediction counts only by their FLOPs."""
    unpruned_ms = base['latency_ms'] - base['llm_ms']
    ideal_ms = unpruned_ms + base['llm_ms'] * row['llm_gflops'] / base['llm_gflops']
    return (base['latency_ms'] / ideal_ms) / row['flops_speedup']


def table(results: dict) -> str:
    width = max([len(label) for label in results['methods']] + [6]) + 2
    header = (f"{'method':<{width}}{'latency ms':>11}{'speed-up':>9}{'tokens in':>10}{'vis@last':>9}{'avg/layer':>10}"
              f"{'GFLOPs':>9}{'FLOPs':>7}{'FLOP-pred':>10}{'eff.':>6}{'ceiling':>8}{'prune ms':>9}{'prune %':>8}")
    lines = [header, '-' * len(header)]
    for label, row in results['methods'].items():
        lines.append(f"{label:<{width}}{row['latency_ms']:>11.1f}{row.get('latency_speedup', 1):>8.2f}x"
                     f"{row['tokens_into_llm']:>10.0f}{row['visual_tokens_last_layer']:>9.0f}"
                     f"{row['mean_tokens_per_layer']:>10.1f}{row['gflops']:>9.2f}{row.get('flops_ratio', 1):>7.2f}"
                     f"{row.get('flops_speedup', 1):>9.2f}x{row.get('efficiency', 1):>6.2f}"
                     f"{row.get('efficiency_ceiling', 1):>8.2f}{row['pruning_ms']:>9.2f}"
                     f"{100 * row.get('pruning_share', 0):>7.2f}%")
    return '\n'.join(lines)
