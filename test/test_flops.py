"""``forward_flops`` against torch's FlopCounterMode (exact with eager attention), part by part."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from model_fixtures import FixedKeep, example_inputs, tiny_model_and_tokenizer
from vla_prune_ros.model import ForwardTrace
from vla_prune_ros.model.flops import forward_flops, sequence_length

TOLERANCE = 0.02

SHAPES = {
    'default': dict(),
    'one_camera_gqa_small_head': dict(camera_names=['primary'], proprio_dim=0, proprio_norm=None,
                                      vision=dict(image_size=42), chunk_len=4, action_dim=3,
                                      action_names=['x', 'y', 'z'], action_norm=None, head_num_blocks=1,
                                      llm=dict(num_key_value_heads=1, num_hidden_layers=3)),
    'single_siglip_three_cameras': dict(camera_names=['a', 'b', 'c'], llm=dict(intermediate_size=96),
                                        vision=dict(backbones=[dict(type='siglip', hidden_size=48,
                                                                    num_hidden_layers=3, num_attention_heads=4,
                                                                    intermediate_size=80)])),
}


def count(function) -> int:
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def assert_close(predicted: float, counted: int, part: str):
    assert counted > 0, part
    assert abs(predicted - counted) / counted < TOLERANCE, f'{part}: formula {predicted:.4g}, counted {counted:.4g}'


@pytest.mark.parametrize('shape, pruner', [
    ('default', None),
    ('one_camera_gqa_small_head', None),
    ('single_siglip_three_cameras', None),
    ('default', FixedKeep(before_llm=[1, 2, 3, 9, 17, 20, 31])),
    ('one_camera_gqa_small_head', FixedKeep(before_llm=range(1, 9), after={0: [2, 3, 4], 1: [3]})),
])
def test_forward_flops_match_the_counter(shape, pruner):
    model, tokenizer = tiny_model_and_tokenizer(attn_implementation='eager', **SHAPES[shape])
    config = model.config
    pixels, proprio, ids = example_inputs(model, tokenizer)
    trace = ForwardTrace()
    with torch.no_grad():
        total = count(lambda: model(pixels, proprio, ids, pruner=pruner, trace=trace))
        predicted = forward_flops(config, trace.layer_tokens)
        assert_close(predicted.total, total, 'total')

        # Part by part, so a compensating error cannot hide.
        per_camera = 3 * len(config.vision.backbones)
        stacked = pixels.reshape(config.num_cameras, per_camera, *pixels.shape[2:])
        vision = count(lambda: [vit(stacked[:, 3 * i:3 * i + 3]) for i, vit in enumerate(model.vision_backbones)])
        assert_close(predicted.vision, vision, 'vision')
        features = torch.cat([vit(stacked[:, 3 * i:3 * i + 3]) for i, vit in enumerate(model.vision_backbones)],
                             dim=-1).reshape(1, config.num_visual_tokens, -1)
        projector = count(lambda: model.projector(features))
        if model.proprio_projector is not None:
            projector += count(lambda: model.proprio_projector(proprio))
        assert_close(predicted.projector, projector, 'projector')
        embeddings = model.embed_sequence(model.projector(features), proprio, ids)
        layout = model.layout(ids.shape[1] - 1)
        llm = count(lambda: model.run_llm(embeddings, layout, pruner=pruner))
        assert_close(predicted.llm, llm, 'llm')
        head = count(lambda: model.action_head(torch.zeros(1, config.num_actions, model.hidden_size)))
        assert_close(predicted.head, head, 'head')

    full = sequence_length(config, ids.shape[1])
    assert full == layout.seq_len
    if pruner is None:
        assert trace.layer_tokens == [full] * len(model.llm.layers)
    else:
        assert trace.layer_tokens[0] < full
        unpruned = forward_flops(config, [full] * len(model.llm.layers))
        assert predicted.llm < unpruned.llm and predicted.vision == unpruned.vision
