"""A small word-level tokenizer for small models, built with ``tokenizers``.

OFT checkpoints ship Llama's tokenizer; a small model trained here needs only the words of
its prompts. Special ids mirror Llama's (pad 0, BOS 1, EOS 2) plus a readout token that
plays the role of Llama's '▁' (29871).
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL_TOKENS = ['<pad>', '<s>', '</s>', '▁', '<unk>']
PAD_ID, BOS_ID, EOS_ID, READOUT_ID, UNK_ID = range(5)


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted({w.lower() for w in words}):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token='<unk>'))
    tokenizer.normalizer = normalizers.Lowercase()   # the vocabulary is lower case ('In:' -> 'in')
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                       pre_tokenizers.Punctuation()])
    # Prepend BOS, never append EOS: as Llama's tokenizer is used at OFT inference.
    tokenizer.post_processor = processors.TemplateProcessing(single='<s> $A', special_tokens=[('<s>', BOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token='<s>', eos_token='</s>',
                                   pad_token='<pad>', unk_token='<unk>')


def prompt_words(template: str, instructions: list[str]) -> list[str]:
    text = ' '.join([template.replace('{instruction}', ' ')] + instructions).lower()
    words = []
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    for piece, _ in pre.pre_tokenize_str(text):
        words.append(piece)
    return words


def load_tokenizer(directory: Path):
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
