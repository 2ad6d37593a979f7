"""A tiny causal language model for fast tests of serving and training (needs the train extra).

`build_tiny_model` writes a randomly initialised Qwen2 model (hidden size 64, 2 layers) and a
byte-level BPE tokenizer trained locally on a built-in corpus, with a ChatML chat template, into a
folder that ``AutoModelForCausalLM`` and ``AutoTokenizer`` load like any downloaded model. It is
deterministic for a given seed, needs no network and takes well under two seconds, so tests can
exercise real generation, token ids and gradient steps without a model hub.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, as Qwen and SmolLM use: every turn's ids are a prefix of the next prompt's."""

CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Two plus two is four. Seventeen plus twenty-five is forty-two.",
    "The weather today is sunny with a light breeze from the west.",
    "I loved this movie, it was wonderful! I hated this film, it was terrible.",
    "user assistant system: please answer the question briefly and politely.",
    "Hello! How can I help you today? Thank you, goodbye.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 + - * / = ( ) [ ] { } , . ; : ' \" ? !",
)


def build_tiny_model(folder: str | Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """Write a tiny Qwen2 model, its tokenizer and a chat template into ``folder``; returns it.

    The same ``seed`` gives the same weights; the tokenizer does not depend on the seed."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    # Byte-level BPE: every text encodes (no unknown token) and decodes back to itself.
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    return folder
