"""Which engine serves which rollout, and the request and reply shapes, without any HTTP."""

from __future__ import annotations

from agl.trainer.proxy import Upstreams
from agl.trainer.proxy.shape import asked, reshape, upstream_body


def test_a_new_rollout_goes_to_the_least_busy_engine_and_stays() -> None:
    engines = Upstreams(["http://a/v1/", "http://b/v1", "http://a/v1"])
    assert engines.urls == ("http://a/v1", "http://b/v1")  # trailing slashes and repeats dropped
    assert engines.candidates("r1") == ["http://a/v1", "http://b/v1"]
    engines.stick("r1", "http://a/v1")
    assert engines.candidates("r2") == ["http://b/v1", "http://a/v1"]  # a already serves a rollout
    engines.stick("r2", "http://b/v1")
    engines.acquire("http://a/v1")
    engines.acquire("http://a/v1")
    assert engines.candidates("r3")[0] == "http://b/v1"  # a is busier
    assert engines.candidates("r1")[0] == "http://a/v1"  # but r1 stays where it is
    engines.release("http://a/v1")
    engines.release("http://a/v1")
    assert engines.engine_of("r1") == "http://a/v1"


def test_rollouts_of_a_removed_engine_move_and_old_rollouts_are_forgotten() -> None:
    engines = Upstreams(["http://a/v1", "http://b/v1"], remembered=2)
    engines.stick("r1", "http://a/v1")
    engines.stick("r2", "http://b/v1")
    engines.set(["http://b/v1", "http://c/v1"])
    assert engines.engine_of("r1") is None
    assert engines.candidates("r1") == ["http://c/v1", "http://b/v1"]  # c serves no rollout yet
    engines.stick("r1", "http://c/v1")
    engines.stick("r3", "http://c/v1")  # a third rollout: the least recently used (r2) is forgotten
    assert [engines.engine_of(r) for r in ("r1", "r2", "r3")] == ["http://c/v1", None, "http://c/v1"]
    engines.stick("r4", "http://gone/v1")  # an engine no longer listed is never assigned
    assert engines.engine_of("r4") is None
    assert Upstreams([]).candidates("r1") == []


def test_an_engine_that_did_not_answer_is_tried_last_until_it_may_be_back() -> None:
    now = [0.0]
    engines = Upstreams(["http://a/v1", "http://b/v1"], down_for=10, clock=lambda: now[0])
    engines.stick("r1", "http://a/v1")
    engines.failed("http://a/v1")
    assert engines.candidates("r2") == ["http://b/v1", "http://a/v1"]  # idle, but down
    assert engines.candidates("r1") == ["http://b/v1", "http://a/v1"]  # its own engine too
    now[0] = 10.5
    assert engines.candidates("r1")[0] == "http://a/v1"  # tried again: it may have restarted
    engines.failed("http://a/v1")
    engines.answered("http://a/v1")
    assert engines.candidates("r1")[0] == "http://a/v1"  # it answered: up again


def test_the_engine_is_asked_for_ids_and_logprobs_and_the_agent_gets_its_own_shape() -> None:
    chat = {"model": "m", "messages": [], "logprobs": False}
    agent = asked("chat", chat)
    assert upstream_body("chat", chat, agent) == {
        "model": "m",
        "messages": [],
        "logprobs": True,
        "return_token_ids": True,
    }
    reply = {"prompt_token_ids": [1], "choices": [{"index": 0, "token_ids": [2], "logprobs": {"content": []}}]}
    assert reshape("chat", reply, agent) == {"choices": [{"index": 0, "logprobs": None}]}

    completion = {"model": "m", "prompt": "p", "logprobs": 0, "return_token_ids": True}
    agent = asked("completions", completion)
    assert agent.everything  # logprobs=0 asks for the sampled tokens' logprobs
    assert upstream_body("completions", completion, agent) == completion
    assert asked("completions", {"prompt": "p"}).logprobs is False
    assert upstream_body("completions", {"prompt": "p"}, asked("completions", {"prompt": "p"}))["logprobs"] == 0
