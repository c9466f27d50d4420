"""``vla-prune train``: fine-tune (or train from scratch) an OFT-family policy, optionally with
LightVLA's differentiable token selection in the loop.

Built on ``accelerate``: the same command runs on this CPU and on several GPUs
(``accelerate launch -m vla_prune_ros.cli train ...``). L1 loss on normalised action chunks,
optional LoRA on the LLM and ViT linear layers through ``peft`` (merged before saving),
noise annealed linearly from 1 to 0 for LightVLA, checkpoints in the project's format.

Training-only extras, none of which the saved policy contains:
  --aux-weight  an auxiliary head regresses the demonstrations' privileged targets (where the target
                cube and the goal are) from the read-out hidden states, so the vision and the LLM learn
                to ground the instruction in the image early; dropped when saving.
  --ema         an exponential moving average of the weights (``torch.optim.swa_utils``) is what gets
                saved.
  --bf16        bf16 autocast where the device computes bf16 natively (CUDA with bf16; a CPU with
                AVX512_BF16 or AMX). Elsewhere it is emulated: a training step took 11.6 s against 1.1 s
                in fp32 on an AVX2-only EPYC, so there it is skipped with a warning.
Every ``--checkpoint-minutes`` the full state (weights, EMA, optimiser, schedule, step, every RNG) is
written to ``OUT/resume.pt``, and the weights the run would save now to ``OUT/latest`` (with
``progress.json``: step and training seconds); running the same command again continues from it, so a run split
across sittings ends where an unbroken one would.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data.demonstrations import FAR_TARGET_MM, action_chunk, dataset_statistics, load_episodes
from .model.checkpoint import load_checkpoint, save_checkpoint
from .model.configuration_vla import OFT_PROMPT, BackboneConfig, NormStats, VisionConfig, VLAConfig
from .model.modeling_vla import VLAModel
from .auxiliary import (PRIVILEGED_SCALE, PatchPositionHead, PointingHead, TargetHead, patch_positions, target_patch,
                        target_points)
from .model.processing import (center_crop_box, crop_and_resize, normalize_actions, normalize_proprio,
                               pad_prompts, pixel_values, prepare_frames, prompt_ids, random_crop_box, to_uint8,
                               to_unit_float)
from .model.tokenizer import READOUT_ID, build_word_tokenizer, prompt_words
from .pruning import create_method


def sim_small_config(vocab_size: int, stats: dict, camera_names: list[str], action_names: list[str],
                     image_size: int = 112, film: bool = False) -> VLAConfig:
    """The default policy's shape: one small SigLIP-style ViT, a 4-layer Llama, OFT's token layout."""
    return VLAConfig(
        camera_names=list(camera_names),
        vision=VisionConfig(image_size=image_size, patch_size=14, film=film, backbones=[BackboneConfig(
            type='siglip', hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256)]),
        llm=dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-6),
        proprio_dim=len(stats['proprio']['q01']), action_dim=len(action_names), chunk_len=8,
        action_names=list(action_names), readout_token_id=READOUT_ID,
        action_norm=NormStats(stats['action']['q01'], stats['action']['q99'], stats['action'].get('mask')),
        proprio_norm=NormStats(stats['proprio']['q01'], stats['proprio']['q99'], stats['proprio'].get('mask')))


class Batches:
    """Random (observation, chunk) samples from demonstrations, with random-crop augmentation.

    With ``camera_geometry`` (a demonstration meta's, see ``sim.cameras``) and privileged targets,
    each sample also carries the patch each pointing target falls in, per camera, after its crop.
    """

    def __init__(self, episodes, config: VLAConfig, tokenizer, seed: int, augment: bool = True,
                 camera_geometry: dict | None = None, patch_positions: bool = False):
        self.config, self.augment = config, augment
        self.camera_geometry = camera_geometry
        self.patch_positions_on = patch_positions and camera_geometry is not None
        self.rng = np.random.default_rng(seed)
        size = config.vision.image_size
        # Frames resized once to the model's resolution; cropping happens per sample.
        self.frames = [[prepare_frames(e.frames[name], size) for name in config.camera_names] for e in episodes]
        self.raw_proprio = [e.proprio for e in episodes]
        self.proprio = [normalize_proprio(e.proprio, config).astype(np.float32) for e in episodes]
        self.targets = [normalize_actions(e.actions, config).astype(np.float32) for e in episodes]
        self.prompts = [prompt_ids(tokenizer, e.instruction, config) for e in episodes]
        self.privileged = [e.privileged for e in episodes] if all(e.privileged is not None for e in episodes) else None
        self.index = [(i, t) for i, e in enumerate(episodes) for t in range(len(e))]
        self.sample_weights: np.ndarray | None = None   # per entry of ``index``; None = uniform
        self.last_drawn: list[tuple[int, int]] = []       # (episode, step) of each sample last drawn

    def __len__(self) -> int:
        return len(self.index)

    def weight_far_targets(self, weight: float) -> None:
        """Draw samples whose target lies over FAR_TARGET_MM from the TCP in xy ``weight`` times as often:
        an episode's first steps, where only the third-person view says where the named cube is."""
        if self.privileged is None:
            raise ValueError('weighting far targets needs demonstrations with privileged targets')
        far = np.concatenate([np.linalg.norm(p[:, :2], axis=1) * 1000 > FAR_TARGET_MM for p in self.privileged])
        weights = np.where(far, weight, 1.0)
        self.sample_weights = weights / weights.sum()

    def sample(self, batch_size: int, device) -> dict[str, torch.Tensor]:
        config, size = self.config, self.config.vision.image_size
        if self.sample_weights is None:
            picks = self.rng.integers(0, len(self.index), size=batch_size)
        else:
            picks = self.rng.choice(len(self.index), size=batch_size, p=self.sample_weights)
        pixels, proprio, targets, prompts, privileged, pointing, positions = [], [], [], [], [], [], []
        pointing_on = self.camera_geometry is not None and self.privileged is not None
        self.last_drawn = [self.index[pick] for pick in picks]
        for pick in picks:
            episode, t = self.index[pick]
            frames, boxes = [], []
            for camera_frames in self.frames[episode]:
                box = self._crop_box()
                boxes.append(box)
                frames.append(to_uint8(crop_and_resize(to_unit_float(camera_frames[t]), box, size)))
            pixels.append(pixel_values(frames, config)[0])
            if pointing_on:
                pointing.append(self._target_patches(episode, t, boxes))
            if self.patch_positions_on:
                positions.append(self._patch_positions(episode, t, boxes))
            proprio.append(self.proprio[episode][t])
            targets.append(action_chunk(self.targets[episode], t, config.chunk_len))
            prompts.append(self.prompts[episode])
            if self.privileged is not None:
                privileged.append(self.privileged[episode][t])
        ids, padding = pad_prompts(prompts, config)
        batch = {'pixels': torch.stack(pixels).to(device), 'proprio': torch.tensor(np.stack(proprio)).to(device),
                 'ids': ids.to(device), 'padding': padding.to(device),
                 'targets': torch.tensor(np.stack(targets)).to(device)}
        if privileged:
            batch['privileged'] = torch.tensor(np.stack(privileged) / PRIVILEGED_SCALE).to(device)
        if pointing:
            batch['target_patches'] = torch.tensor(np.stack(pointing), dtype=torch.long).to(device)
        if positions:
            batch['patch_positions'] = torch.tensor(np.stack(positions), dtype=torch.float32).to(device)
        return batch

    def _crop_box(self) -> tuple[float, float, float, float]:
        """A 90 %-area square: at a random offset when augmenting, else the inference center crop."""
        if not self.augment:
            return center_crop_box() if self.config.center_crop else (0.0, 0.0, 1.0, 1.0)
        return random_crop_box(self.rng)

    def _target_patches(self, episode: int, t: int, boxes) -> np.ndarray:
        from .sim.cameras import project
        raw = self.raw_proprio[episode][t]
        points = target_points(self.privileged[episode][t], raw[:3])
        grid = self.config.vision.image_size // self.config.vision.patch_size
        return np.array([[target_patch(project(self.camera_geometry[name], point, raw[:3], raw[3:6])
                                       if point is not None else None, box, grid) for point in points]
                         for name, box in zip(self.config.camera_names, boxes)])

    def _patch_positions(self, episode: int, t: int, boxes) -> np.ndarray:
        from .sim.cameras import plane_points
        from .sim.scene import CUBE_HALF
        raw = self.raw_proprio[episode][t]
        grid = self.config.vision.image_size // self.config.vision.patch_size
        return np.concatenate([patch_positions(self.camera_geometry[name], box, grid, raw[:3], raw[3:6], CUBE_HALF,
                                               plane_points)
                               for name, box in zip(self.config.camera_names, boxes)])

    def rng_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def sincos_2d_table(grid: int, dim: int) -> torch.Tensor:
    """(grid * grid, dim), row-major: sin/cos of the row in the first half, of the column in the second
    (the fixed 2-D table of MAE), so a patch's place on the image is a smooth code from step 0."""
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, columns = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                   indexing='ij')

    def encode(positions):
        angles = positions.reshape(-1, 1) * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(columns)], dim=1).float()


def init_sincos_positions(model: VLAModel) -> None:
    """Start each ViT's (still learned) position embeddings from the 2-D sin-cos table."""
    grid = model.config.vision.grid
    for vit in model.vision_backbones:
        table = vit.embeddings.position_embedding.weight    # SigLIP: one row per patch, no class token
        with torch.no_grad():
            table.copy_(sincos_2d_table(grid, table.shape[1]))


def apply_lora(model: VLAModel, rank: int):
    from peft import LoraConfig, inject_adapter_in_model
    targets = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
    config = LoraConfig(r=rank, lora_alpha=min(rank, 16), target_modules=targets, lora_dropout=0.0)
    model.llm = inject_adapter_in_model(config, model.llm)
    for name, parameter in model.named_parameters():
        # LoRA adapters on the LLM; the projectors and the action head train fully, as OFT does.
        parameter.requires_grad = ('lora_' in name or name.startswith(('projector', 'proprio_projector',
                                                                         'action_head')))
    return model


def merge_lora(model: VLAModel) -> VLAModel:
    """Fold LoRA deltas into the base weights so the saved checkpoint is a plain model."""
    for module in model.llm.modules():
        if hasattr(module, 'lora_A') and hasattr(module, 'base_layer'):
            module.merge()
    state = {k.replace('.base_layer', ''): v for k, v in model.state_dict().items() if 'lora_' not in k}
    plain = VLAModel(model.config)
    plain.load_state_dict(state)
    return plain


def native_bf16(use_cuda: bool, cpuinfo: str | None = None) -> bool:
    """Whether bf16 runs natively on the device training will use (see ``--bf16`` above)."""
    if use_cuda:
        return torch.cuda.is_bf16_supported()
    if cpuinfo is None:
        try:
            cpuinfo = Path('/proc/cpuinfo').read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return bool(flags & {'avx512_bf16', 'amx_bf16'})


def train(args: argparse.Namespace) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    bf16 = args.bf16 and native_bf16(torch.cuda.is_available() and not args.cpu)
    if args.bf16 and not bf16:
        print('train: --bf16 ignored: this device has no native bf16 (it would be emulated, about 10x '
              'slower); training in fp32', file=sys.stderr)
    accelerator = Accelerator(cpu=args.cpu, mixed_precision='bf16' if bf16 else 'no')
    set_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    # Frames are resized to the model's size as they are read: the raw ones are never all in memory.
    initial = load_checkpoint(args.init) if args.init else None
    frame_size = initial[0].config.vision.image_size if initial else args.image_size
    meta, episodes = {}, []
    for directory in args.data:
        meta, more = load_episodes(Path(directory), limit=args.max_episodes, frame_size=frame_size)
        episodes += more
    if initial:
        model, tokenizer = initial
        stats = json.loads((Path(args.init) / 'dataset_statistics.json').read_text() or '{}')
    else:
        stats = dataset_statistics(episodes)
        tokenizer = build_word_tokenizer(prompt_words(OFT_PROMPT,
                                                      sorted({e.instruction for e in episodes})))
        config = sim_small_config(len(tokenizer), stats, meta['camera_names'], meta['action_names'],
                                  args.image_size, film=args.film)
        model = VLAModel(config)
        if getattr(args, 'sincos_positions', False):
            init_sincos_positions(model)
    model.train()
    pruner = None
    if args.method != 'none':
        star = {'query_mode': args.query_mode} if args.method == 'lightvla_star' else {}
        pruner = create_method(args.method, noise=args.noise, **star)
    if pruner is not None:
        pruner.train(True)
    if args.lora_rank:
        model = apply_lora(model, args.lora_rank)
    patch_position_weight = getattr(args, 'patch_position_weight', 0.0)
    per_patch = args.pointing_weight > 0 or patch_position_weight > 0
    geometry = meta.get('camera_geometry') if per_patch else None
    batches = Batches(episodes, model.config, tokenizer, seed=args.seed + accelerator.process_index,
                      camera_geometry=geometry, patch_positions=patch_position_weight > 0)
    if getattr(args, 'far_sample_weight', 1.0) != 1.0:
        batches.weight_far_targets(args.far_sample_weight)
    episode_count = len(episodes)
    del episodes        # from here on Batches alone holds the frames
    auxiliary = None
    if args.aux_weight > 0 or per_patch:
        if batches.privileged is None or (per_patch and geometry is None):
            raise SystemExit(f'{args.data}: the auxiliary losses need demonstrations with privileged targets '
                             '(and, for the per-patch ones, camera_geometry in meta.json)')
        auxiliary = torch.nn.ModuleDict({'target': TargetHead(model.hidden_size, batches.privileged[0].shape[1]),
                                         'pointing': PointingHead(model.hidden_size),
                                         'patch_position': PatchPositionHead(model.hidden_size)})
    parameters = [p for p in model.parameters() if p.requires_grad]
    extra = None
    if pruner is not None and pruner.name == 'lightvla_star':
        extra = pruner.prepare_queries(accelerator, model.config.num_visual_tokens, model.hidden_size)
        parameters += list(extra.parameters())
    if auxiliary is not None:
        parameters += list(auxiliary.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(args.warmup, 1)) *
                                                 0.5 * (1 + math.cos(math.pi * min(s / args.steps, 1.0))))
    if auxiliary is not None:
        model, auxiliary, optimizer = accelerator.prepare(model, auxiliary, optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    final_hidden = {}
    if per_patch:
        # The normed hidden states of every token entering layer --pointing-layer (the final norm when it is
        # the depth): pointing there leaves the later layers to carry where the target is to the read-out.
        depth = len(core.llm.layers)
        layer = args.pointing_layer or depth
        if not 1 <= layer <= depth:
            raise SystemExit(f'--pointing-layer: must be in [0, {depth}], got {args.pointing_layer}')
        norm = core.llm.norm if layer == depth else core.llm.layers[layer].input_layernorm
        norm.register_forward_hook(lambda module, inputs, output: final_hidden.__setitem__('h', output))
    ema = AveragedModel(core, multi_avg_fn=get_ema_multi_avg_fn(args.ema)) if args.ema > 0 else None
    resume_path = out / 'resume.pt'
    first_step, losses, wall_before = 0, [], 0.0
    if resume_path.is_file():
        state = torch.load(resume_path, map_location=accelerator.device, weights_only=False)
        core.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        schedule.load_state_dict(state['schedule'])
        for module, key in ((ema, 'ema'), (auxiliary and accelerator.unwrap_model(auxiliary), 'auxiliary'),
                            (extra, 'extra')):
            if module is not None:
                module.load_state_dict(state[key])
        batches.set_rng_state(state['batch_rng'])
        torch.set_rng_state(state['torch_rng'])
        first_step, losses, wall_before = state['step'], state['losses'], state['wall_time_s']
        accelerator.print(f'resuming {out} at step {first_step}')

    def save_resume_state(step: int) -> None:
        if not accelerator.is_main_process:
            return
        out.mkdir(parents=True, exist_ok=True)
        state = {'model': core.state_dict(), 'optimizer': optimizer.state_dict(), 'schedule': schedule.state_dict(),
                 'batch_rng': batches.rng_state(), 'torch_rng': torch.get_rng_state(), 'step': step,
                 'losses': losses, 'wall_time_s': wall_before + time.time() - started}
        for module, key in ((ema, 'ema'), (auxiliary and accelerator.unwrap_model(auxiliary), 'auxiliary'),
                            (extra, 'extra')):
            if module is not None:
                state[key] = module.state_dict()
        torch.save(state, out / 'resume.pt.tmp')
        (out / 'resume.pt.tmp').replace(resume_path)   # atomic: a kill mid-write leaves the old state
        # What the run would save now, loadable while it trains (probes, learning curves).
        if args.lora_rank:
            return   # unmerged adapters are not a loadable policy
        latest = save_checkpoint(ema.module if ema is not None else core, tokenizer, out / 'latest', stats)
        (latest / 'progress.json').write_text(json.dumps({'step': step, 'wall_time_s': state['wall_time_s']}))

    progress = tqdm(range(first_step, args.steps), desc='train', disable=not accelerator.is_main_process,
                    dynamic_ncols=True, initial=first_step, total=args.steps)
    started, last_save, kept, aux_loss = time.time(), time.time(), float('nan'), float('nan')
    target_errors_mm = []
    noise_scales = []
    for step in progress:
        # Past the time budget this step is the last one; it runs with the selection noise at 0.
        last = bool(args.max_minutes) and wall_before + time.time() - started > 60 * args.max_minutes
        if pruner is not None:
            # Annealed 1 -> 0 over the steps that will really run: whichever of the step count and
            # the time budget is nearer its end sets the progress, so a time-capped run ends at 0 too.
            done = 1.0 if last else step / max(args.steps - 1, 1)
            if args.max_minutes and step > first_step:
                elapsed = wall_before + time.time() - started
                per_step = (time.time() - started) / (step - first_step)
                done = max(done, (elapsed + per_step) / (60 * args.max_minutes))
            noise_scales.append(max(0.0, 1.0 - min(done, 1.0)))
            pruner.set_noise_scale(noise_scales[-1])
        batch = batches.sample(args.batch_size, accelerator.device)
        with accelerator.autocast():
            predicted, readout = model(batch['pixels'], batch['proprio'], batch['ids'], batch['padding'],
                                       pruner=pruner, return_readout=True)
            loss = torch.nn.functional.l1_loss(predicted.float(), batch['targets'])
            total = loss
            if auxiliary is not None:
                heads = accelerator.unwrap_model(auxiliary)
                where = heads['target'](readout).float()
                aux = args.aux_weight * torch.nn.functional.l1_loss(where, batch['privileged'])
                # The target head's miss in mm: the grounding read-out, the first thing that must improve.
                miss = (where[:, :2] - batch['privileged'][:, :2]).detach().norm(dim=1).mean()
                target_errors_mm.append(float(miss) * 100)
                if per_patch:
                    layout = core.layout(batch['ids'].shape[1] - 1)
                    patches = final_hidden['h'][:, layout.patch_start:layout.patch_end]
                if args.pointing_weight > 0:
                    aux = aux + args.pointing_weight * heads['pointing'].loss(patches, batch['target_patches'])
                if patch_position_weight > 0:
                    aux = aux + patch_position_weight * heads['patch_position'].loss(patches,
                                                                                     batch['patch_positions'])
                total = loss + aux
                aux_loss = aux.item()
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(total)
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if ema is not None:
            ema.update_parameters(core)
        losses.append(loss.item())
        if pruner is not None and step % 25 == 0:
            kept = pruner_kept_fraction(core, pruner, batch)
        progress.set_postfix(loss=f'{np.mean(losses[-50:]):.4f}', aux=f'{aux_loss:.3f}',
                             target_mm=f'{np.mean(target_errors_mm[-50:] or [np.nan]):.0f}', kept=f'{kept:.2f}')
        if last or (args.max_minutes and noise_scales[-1:] == [0.0]):
            progress.write(f'time budget of {args.max_minutes} min reached at step {step + 1}; saving')
            break
        if args.checkpoint_minutes and time.time() - last_save > 60 * args.checkpoint_minutes:
            save_resume_state(step + 1)
            last_save = time.time()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = ema.module if ema is not None else core
        final = merge_lora(final) if args.lora_rank else final
        final.eval()
        save_checkpoint(final, tokenizer, out, stats)
        if extra is not None:
            pruner.save_queries(out)
        record = {'command': 'vla-prune train ' + ' '.join(sys.argv[2:]) if len(sys.argv) > 2 else '',
                  'args': vars(args), 'final_loss': float(np.mean(losses[-100:])),
                  'wall_time_s': round(wall_before + time.time() - started, 1), 'steps_done': len(losses),
                  'episodes': episode_count, 'transitions': len(batches)}
        if noise_scales:
            record['noise_scale_first_last'] = [noise_scales[0], noise_scales[-1]]
        (out / 'training_args.json').write_text(json.dumps(record, indent=2))
        resume_path.unlink(missing_ok=True)
    return out


@torch.no_grad()
def pruner_kept_fraction(model: VLAModel, pruner, batch) -> float:
    """Fraction of patches LightVLA's inference rule would keep on this batch's embeddings."""
    patches = model.encode_images(batch['pixels'], batch['ids'], batch['padding'])
    proprio = batch['proprio'] if model.proprio_projector is not None else None
    embeddings = model.embed_sequence(patches, proprio, batch['ids'])
    layout = model.layout(batch['ids'].shape[1] - 1)
    positions = torch.arange(embeddings.shape[1], device=embeddings.device)
    padding = torch.zeros(embeddings.shape[:2], dtype=torch.bool, device=embeddings.device)
    padding[:, layout.prompt_start:layout.readout_index + 1] = batch['padding']
    return pruner.kept_fraction(embeddings, positions, layout, padding)
