"""The hot path never waits on the device between LLM layers.

Each method runs under a ``TorchDispatchMode`` that counts the ops which force a device->host
sync on a GPU: ``.item()`` (``_local_scalar_dense``), ``nonzero``, the masked-select family,
``unique`` and indexing with a boolean mask. A whole ``VLAPolicy.infer`` (preprocessing included)
may have at most one: LightVLA's variable kept count.
"""
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model_fixtures import INSTRUCTIONS, random_frames, tiny_model_and_tokenizer
from vla_prune_ros.policy import VLAPolicy

SYNCING = {'_local_scalar_dense', 'nonzero', 'masked_select', 'masked_scatter',
           '_unique', '_unique2', 'unique_dim', 'unique_consecutive', 'argwhere'}


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNCING:
            self.syncs.append(name)
        elif name in ('index', 'index_put', 'index_put_'):
            indices = args[1] if len(args) > 1 else ()
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()):
                self.syncs.append(f'{name} with a boolean mask')
        return func(*args, **(kwargs or {}))


def moved(frames, seed):
    """Copies with one random 14 x 28 block per camera replaced (two patches changed)."""
    rng = np.random.default_rng(seed)
    out = [frame.copy() for frame in frames]
    for frame in out:
        row, col = (int(v) for v in rng.integers(0, 2, 2))
        frame[14 * row:14 * row + 14, 14 * col:14 * col + 28] = rng.integers(0, 256, (14, 28, 3))
    return out


@pytest.mark.parametrize('name, allowed', [('none', 0), ('specprune', 0), ('lightvla', 1), ('lightvla_star', 1)])
def test_at_most_one_sync_per_inference(name, allowed):
    model, tokenizer = tiny_model_and_tokenizer(llm=dict(num_hidden_layers=8), center_crop=True)
    policy = VLAPolicy(model, tokenizer, name)
    frames = random_frames(model.config, seed=1)
    sequence = [frames] + [moved(frames, seed) for seed in range(1, 12)]
    counts, records = [], []
    for step, images in enumerate(sequence):
        policy.observe_frames(images)
        if step % 4 == 3:
            with SyncCounter() as counter:
                out = policy.infer(images, np.zeros(8), INSTRUCTIONS[0], mode='fine', ee_speed=0.05)
            counts.append(counter.syncs)
            records.append(out.record)
    assert all(len(syncs) <= allowed for syncs in counts), counts
    if name != 'none':          # the pruning path really ran: tokens were cut
        assert records[-1].layer_tokens[-1] < records[-1].tokens_total


def test_the_counter_sees_the_syncs_it_looks_for():
    with SyncCounter() as counter:
        x = torch.arange(10)
        int(x.sum())
        torch.nonzero(x > 3)
        x[x > 3]
    assert '_local_scalar_dense' in counter.syncs and 'nonzero' in counter.syncs
    assert 'index with a boolean mask' in counter.syncs or counter.syncs.count('nonzero') >= 2


def test_stage_clocks_time_cuda_with_events_and_never_sync_between_layers(monkeypatch):
    """On a GPU the pruning timer records CUDA events (no host sync per interval) and reads them once."""
    from vla_prune_ros.model.pruned_llm import StageClock
    syncs, recorded = [], []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.at = None

        def record(self):
            self.at = 10.0 * len(recorded)          # ms
            recorded.append(self)

        def synchronize(self):
            syncs.append('event')

        def elapsed_time(self, end):
            return end.at - self.at

    monkeypatch.setattr(torch.cuda, 'Event', FakeEvent)
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: syncs.append(device))
    clock = StageClock(torch.device('cuda', 0))
    for _ in range(3):
        clock.start()
        clock.stop()
    assert syncs == [] and len(recorded) == 6
    assert clock.total == pytest.approx(0.03) and syncs == ['event']
    assert clock.now() >= 0 and syncs[-1] == torch.device('cuda', 0)    # whole-stage laps synchronise
