"""The embedded engine's answers do not depend on what else is asked of it: a request's neighbours in
a batch, the requests callers gave up on and the tokenizer's text clean-up leave its tokens and text
as they would be alone. Real transformers models built from configs, the real engine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from agl.trainer.serving.engine import Generation, PromptError, SamplingParams
from agl.trainer.serving.text_stream import TextStream
from agl.trainer.serving.transformers_engine import TransformersEngine
from agl.trainer.testing import CORPUS, build_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture
def engine(tiny_dir: Path) -> Iterator[TransformersEngine]:
    served = TransformersEngine.load(tiny_dir, seed=0, max_batch_size=2)
    yield served
    served.close_sync()


async def _as_one_batch(
    engine: TransformersEngine, prompts: list[list[int]], params: list[SamplingParams]
) -> list[Generation | BaseException]:
    """Requests queued while the model is held are decoded together once it is released."""
    with engine.exclusive():
        tasks = [asyncio.ensure_future(engine.generate(p, s)) for p, s in zip(prompts, params, strict=True)]
        await asyncio.sleep(0)  # one turn of the loop: each task submits its request, then waits
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def test_a_finished_row_does_not_push_its_neighbours_past_the_learned_positions(tiny_dir: Path) -> None:
    """A model with learned positions (GPT-2): a request ending at the context length, batched with a
    longer-running one, kept advancing its positions after it finished and failed both requests."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=None)
    engine = TransformersEngine(GPT2LMHeadModel(config), tokenizer, model_name="gpt2-tiny")
    try:
        prompts = [[5] * 60, [6] * 5]  # the first can take 4 tokens before the context (64) is full
        params = [SamplingParams(max_tokens=40, temperature=0)] * 2
        alone = [engine.generate_sync(prompt, param) for prompt, param in zip(prompts, params, strict=True)]
        together = asyncio.run(_as_one_batch(engine, prompts, params))
        assert not [g for g in together if isinstance(g, BaseException)], together
        assert [len(g.token_ids) for g in alone] == [4, 40]
        assert [g.token_ids for g in together] == [g.token_ids for g in alone]  # type: ignore[union-attr]
        assert engine.stats["largest_batch"] == 2
    finally:
        engine.close_sync()


def test_requests_nobody_waits_for_take_no_row_of_a_batch(engine: TransformersEngine) -> None:
    """A client gone before its turn: its request used to take one of ``max_batch_size`` rows (and pad
    every row's prefill to its prompt), so a waiting request was put off to the next batch."""
    prompt = engine.encode("The capital of France is")

    async def one_left_between_two() -> list[Generation]:
        params = SamplingParams(max_tokens=3, temperature=0)
        with engine.exclusive():
            first = asyncio.ensure_future(engine.generate(prompt, params))
            gone = asyncio.ensure_future(engine.generate([7] * 200, params))
            last = asyncio.ensure_future(engine.generate(prompt, params))
            await asyncio.sleep(0)  # each task submits its request
            gone.cancel()
            await asyncio.gather(gone, return_exceptions=True)  # its caller stopped waiting
        return list(await asyncio.gather(first, last))

    answers = asyncio.run(one_left_between_two())
    assert answers[0] == answers[1]
    assert engine.stats == {"batches": 1, "requests": 2, "largest_batch": 2}


def test_a_bad_request_is_refused_before_it_can_fail_its_neighbours(engine: TransformersEngine) -> None:
    """A non-integer seed used to fail the whole batch inside torch; a NaN temperature failed with
    torch's own message about probability tensors."""
    prompt = engine.encode("hello")
    with pytest.raises(PromptError, match="seed must be an integer"):
        engine.generate_sync(prompt, SamplingParams(max_tokens=2, seed=1.5))  # type: ignore[arg-type]
    with pytest.raises(PromptError, match="temperature"):
        engine.generate_sync(prompt, SamplingParams(max_tokens=2, temperature=float("nan")))
    assert len(engine.generate_sync(prompt, SamplingParams(max_tokens=2, seed=2)).token_ids) == 2


def _unigram_tokenizer_that_cleans_up_spaces() -> PreTrainedTokenizerFast:
    """A SentencePiece-style unigram tokenizer with ``clean_up_tokenization_spaces`` on, as older
    models' tokenizer configs have it (transformers ignores the setting only for BPE)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    unigram.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<unk>", "</s>"], unk_token="<unk>", show_progress=False
    )
    unigram.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=unigram, eos_token="</s>", unk_token="<unk>", clean_up_tokenization_spaces=True
    )


def _tiny_engine(tokenizer: PreTrainedTokenizerFast, name: str) -> TransformersEngine:
    """An engine on a one-layer random Qwen2 sized to ``tokenizer``: for what the tokenizer does."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        eos_token_id=tokenizer.eos_token_id,
    )
    return TransformersEngine(Qwen2ForCausalLM(config), tokenizer, model_name=name)


def test_streamed_text_adds_up_to_the_text_of_the_ids_whatever_the_tokenizer_cleans_up() -> None:
    """Clean-up turned "Hello " into "Hello," once "," came: a stream that had sent "Hello " could
    send nothing more, and the whole text was not the text of the sampled ids."""
    tokenizer = _unigram_tokenizer_that_cleans_up_spaces()
    engine = _tiny_engine(tokenizer, "unigram-tiny")
    try:
        text = "Hello , world . I do n't know"
        ids = engine.encode(text)
        assert engine.decode(ids) == text
        stream = TextStream(engine.decode)
        sent = "".join(stream.delta(ids[:n]) for n in range(1, len(ids) + 1))
        assert sent + stream.finish(engine.decode(ids)) == text
    finally:
        engine.close_sync()


class _TokenizerFailingOnThreeIds(PreTrainedTokenizerFast):
    """A tokenizer that cannot decode some ids (as a SentencePiece one refuses ids past its
    vocabulary, which a model with a padded embedding can sample): here, any three ids."""

    def decode(self, token_ids: Any, *args: Any, **kwargs: Any) -> str:
        if len(token_ids) == 3:
            raise IndexError("piece id is out of range")
        return str(super().decode(token_ids, *args, **kwargs))


def test_a_request_whose_ids_cannot_be_decoded_fails_alone(tiny_dir: Path) -> None:
    """The failure used to escape the worker thread and end it: the request's neighbours in the
    batch, and every request after, were never answered."""
    tokenizer = _TokenizerFailingOnThreeIds.from_pretrained(tiny_dir)
    engine = TransformersEngine(AutoModelForCausalLM.from_pretrained(tiny_dir), tokenizer, model_name="tiny")
    prompt = engine.encode("The capital of France is")

    async def failing_then_fine() -> list[asyncio.Future[Generation]]:
        with engine.exclusive():
            tasks = [
                asyncio.ensure_future(engine.generate(prompt, SamplingParams(max_tokens=n, temperature=0)))
                for n in (3, 5)
            ]
            await asyncio.sleep(0)  # each task submits its request
        await asyncio.to_thread(engine.close_sync)  # the worker answers the batch, then stops
        await asyncio.sleep(0)  # the answers it sent before stopping are delivered
        for task in tasks:
            if not task.done():
                task.cancel()
        return tasks

    failing, fine = asyncio.run(failing_then_fine())
    assert not fine.cancelled(), "the neighbour was never answered"
    assert len(fine.result().token_ids) == 5
    assert isinstance(failing.exception(), IndexError)


def _byte_fallback_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-style SentencePiece BPE with byte fallback: a character outside its vocabulary is one
    ``<0xNN>`` piece per UTF-8 byte, each of which decodes alone to U+FFFD."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0, "</s>": 1, **{f"<0x{byte:02X}>": 2 + byte for byte in range(256)}}
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyz"]:
        vocab[piece] = len(vocab)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    bpe.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", unk_token="<unk>")


def test_the_bytes_of_byte_fallback_tokens_are_their_bytes() -> None:
    """Logprobs' ``bytes`` of a ``<0xE6>`` piece were those of U+FFFD, its text decoded alone: a client
    could not put a character split across such tokens back together, which is what they are for."""
    tokenizer = _byte_fallback_tokenizer()
    engine = _tiny_engine(tokenizer, "byte-fallback-tiny")
    try:
        ids = engine.encode("日本😀ok")
        assert engine.decode(ids[1:2]) == "\ufffd"
        assert engine.token_bytes(ids[1]) == b"\xe6"
        assert b"".join(engine.token_bytes(token) for token in ids).decode() == engine.decode(ids) == "日本😀ok"
        assert engine.token_bytes(tokenizer.eos_token_id) == b""  # special tokens: skipped, as in the text
    finally:
        engine.close_sync()
