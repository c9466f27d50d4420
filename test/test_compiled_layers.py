"""``VLAModel.use_compiled_layers``: the same actions as the eager layers, for every method, over a run
whose token count changes between calls; and the eager path when compiling is impossible."""
import warnings

import numpy as np
import pytest
import torch

from model_fixtures import INSTRUCTIONS, random_frames, tiny_model_and_tokenizer
from vla_prune_ros.model import pruned_llm
from vla_prune_ros.policy import VLAPolicy


def actions_over_a_run(policy, frames_list):
    """Chunks of a short run in which the frames change (so SpecPrune's cut differs per call)."""
    policy.reset()
    chunks, kept = [], []
    for step, frames in enumerate(frames_list):
        policy.observe_frames(frames)
        out = policy.infer(frames, np.linspace(-0.5, 0.5, 8), INSTRUCTIONS[step % 2], mode='coarse', ee_speed=0.3)
        chunks.append(out.actions)
        kept.append(out.record.layer_tokens)
    return np.stack(chunks), kept


@pytest.mark.parametrize('method', ['none', 'specprune', 'lightvla'])
def test_compiled_layers_give_the_eager_actions(method):
    model, tokenizer = tiny_model_and_tokenizer(seed=3, llm=dict(num_hidden_layers=4), center_crop=True)
    frames_list = [random_frames(model.config, seed=seed) for seed in (1, 1, 2, 5)]
    eager, eager_kept = actions_over_a_run(VLAPolicy(model, tokenizer, method), frames_list)
    model.use_compiled_layers()
    torch._dynamo.reset()                # compile afresh, so the counter below sees it
    torch._dynamo.utils.counters.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        fused, fused_kept = actions_over_a_run(VLAPolicy(model, tokenizer, method), frames_list)
    model.use_compiled_layers(False)
    assert not [w for w in caught if 'running it eagerly' in str(w.message)], [str(w.message) for w in caught]
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] >= 1      # it did compile
    assert fused_kept == eager_kept
    if method != 'none':      # the cut changes between calls: one graph serves every token count
        assert len({tuple(k) for k in eager_kept}) > 1, eager_kept
    np.testing.assert_allclose(fused, eager, atol=1e-4)


def test_a_failed_compile_warns_and_runs_eagerly():
    """No C++ compiler (here: a compiler path that does not exist) must not stop the policy."""
    from torch._inductor import config as inductor_config

    def scaled(x):
        return torch.nn.functional.silu(x) * 2 + 1

    run = pruned_llm.compiled.__wrapped__(scaled)     # a fresh wrapper, not the cached one
    x = torch.randn(5, 7)
    torch._dynamo.reset()
    with inductor_config.patch({'cpp.cxx': ('/nonexistent/c++',)}):
        with pytest.warns(UserWarning, match='running it eagerly'):
            out = run(x)
        torch.testing.assert_close(out, scaled(x))
        with warnings.catch_warnings():
            warnings.simplefilter('error')            # and stays eager, without warning again
            torch.testing.assert_close(run(x), scaled(x))
    torch._dynamo.reset()


def test_a_method_switch_does_not_compile_again():
    """Every method hands the same arguments to the compiled layers, so after the first method's
    calls a live switch to another runs the graphs already built."""
    model, tokenizer = tiny_model_and_tokenizer(seed=4, llm=dict(num_hidden_layers=4), center_crop=True)
    frames_list = [random_frames(model.config, seed=seed) for seed in (1, 2)]
    model.use_compiled_layers()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    policy = VLAPolicy(model, tokenizer, 'none')
    actions_over_a_run(policy, frames_list)
    graphs = torch._dynamo.utils.counters['stats']['unique_graphs']
    assert graphs >= 1
    for method in ('specprune', 'lightvla'):
        policy.set_method(method)
        actions_over_a_run(policy, frames_list)
        assert torch._dynamo.utils.counters['stats']['unique_graphs'] == graphs, method
