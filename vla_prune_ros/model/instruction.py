"""How long an instruction the model can take, checked when a goal arrives (ROS-free).

The LLM sees ``[BOS][visual tokens][proprio][prompt + readout][action slots][</s>]``; all of it must fit
in the model's position limit (``llm.max_position_embeddings``). The prompt is what is left, and the
instruction is the prompt minus its template. A ``max_instruction_tokens`` limit below that may be set
to bound the work per goal further.
"""
from __future__ import annotations

from .configuration_vla import VLAConfig
from .processing import prompt_ids

# Bytes per token never exceed this for the tokenizers used here; longer text is refused unread, so
# a megabyte of instruction cannot stall the executor in the tokenizer.
MAX_BYTES_PER_TOKEN = 32


def fixed_tokens(config: VLAConfig) -> int:
    """Tokens of the sequence that do not depend on the instruction (BOS, patches, proprio, actions, </s>)."""
    return 1 + config.num_visual_tokens + (1 if config.proprio_dim else 0) + config.num_actions + 1


def model_instruction_limit(tokenizer, config: VLAConfig) -> int:
    """Instruction tokens the model's position limit leaves after the fixed tokens and the prompt template."""
    positions = int(config.llm.get('max_position_embeddings', 2048))
    template = len(prompt_ids(tokenizer, '', config))     # template + readout with an empty instruction
    return max(0, positions - fixed_tokens(config) - template)


class InstructionLimit:
    """``check(instruction)`` -> '' when it fits, else the reason with the limit in it."""

    def __init__(self, tokenizer, config: VLAConfig, max_instruction_tokens: int = 0):
        self._tokenizer, self._config = tokenizer, config
        self.model_limit = model_instruction_limit(tokenizer, config)
        self.limit = self.model_limit
        self.set_limit(max_instruction_tokens)

    def set_limit(self, max_instruction_tokens: int) -> None:
        """0 = the model's limit; otherwise the smaller of the two."""
        requested = int(max_instruction_tokens or 0)
        self.limit = min(requested, self.model_limit) if requested > 0 else self.model_limit

    def tokens(self, instruction: str) -> int:
        """Tokens the instruction adds to the prompt (beyond the template with an empty instruction)."""
        ids = prompt_ids(self._tokenizer, instruction, self._config)
        empty = prompt_ids(self._tokenizer, '', self._config)
        return max(0, len(ids) - len(empty))

    def check(self, instruction: str) -> str:
        source = 'max_instruction_tokens' if self.limit < self.model_limit else "the model's position limit"
        size = len(instruction.encode('utf-8', errors='replace'))
        if size > MAX_BYTES_PER_TOKEN * max(1, self.limit):
            return (f'instruction too long: {size} bytes, the limit is {self.limit} tokens ({source}; '
                    f'{self._config.llm.get("max_position_embeddings", 2048)} positions)')
        count = self.tokens(instruction)
        if count > self.limit:
            return (f'instruction too long: {count} tokens, the limit is {self.limit} tokens ({source}; '
                    f'{self._config.llm.get("max_position_embeddings", 2048)} positions)')
        return ''

