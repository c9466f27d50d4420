"""config.json of the wrong shape or types fails with one CheckpointError naming the file and the field."""
import json
import shutil

import pytest

from model_fixtures import tiny_model_and_tokenizer
from vla_prune_ros.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


@pytest.fixture(scope='module')
def good(tmp_path_factory):
    model, tokenizer = tiny_model_and_tokenizer(seed=0)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp('shapes') / 'good')


def damaged(good, tmp_path, content: bytes):
    directory = tmp_path / 'damaged'
    shutil.copytree(good, directory)
    (directory / 'config.json').write_bytes(content)
    return directory


def edited(good, **changes) -> bytes:
    return json.dumps({**json.loads((good / 'config.json').read_text()), **changes}).encode()


@pytest.mark.parametrize('make, words', [
    (lambda good: b'null', 'expected a JSON object, got null'),
    (lambda good: b'[1, 2]', 'expected a JSON object, got list'),
    (lambda good: bytes(range(256)), 'not valid JSON (binary data'),
    (lambda good: edited(good, vision='siglip'), 'bad config: vision: must be an object, got a string'),
    (lambda good: edited(good, llm=[1]), 'bad config: llm: must be an object, got a list'),
    (lambda good: edited(good, camera_names='primary'), 'bad config: camera_names: must be a list'),
    (lambda good: edited(good, chunk_len='8'), 'bad config: chunk_len: must be an integer, got a string'),
    (lambda good: edited(good, vision={'backbones': 'x'}), 'bad config: vision.backbones: must be a list'),
    (lambda good: edited(good, action_norm=3), 'bad config: action_norm: must be an object or null'),
])
def test_wrong_shapes_name_the_file_and_the_field(good, tmp_path, make, words):
    directory = damaged(good, tmp_path, make(good))
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(directory)
    message = str(raised.value)
    assert message.startswith(str(directory / 'config.json') + ': ') and words in message, message
    assert '\n' not in message
