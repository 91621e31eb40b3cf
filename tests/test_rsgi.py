"""The RSGI request's disconnect handling, with protocol objects shaped like granian's.

The end-to-end tests (test_router, test_traces) run the real granian; these pin the two ways a
request can be cancelled when its client goes away: through a callback on granian's disconnect
future (the request's own task is cancelled) and, where that is not possible, through a work task
and a watcher."""

from __future__ import annotations

import asyncio

import pytest

from unhardcoded.server.rsgi import _until_disconnect


class FutureProto:
    """granian's shape: ``client_disconnect()`` returns a future."""

    def __init__(self) -> None:
        self.gone = asyncio.get_running_loop().create_future()

    def client_disconnect(self) -> asyncio.Future:
        return self.gone


class CoroutineProto:
    """An older shape: ``client_disconnect()`` is a coroutine."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def client_disconnect(self) -> None:
        await self.event.wait()


async def _stalled(log: list[str]) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        log.append("cancelled")
        raise


async def test_a_client_that_goes_away_cancels_the_request_task_itself() -> None:
    proto, log = FutureProto(), []
    outer = asyncio.ensure_future(_until_disconnect(_stalled(log), proto))
    await asyncio.sleep(0)
    proto.gone.set_result(None)
    await asyncio.wait_for(outer, 5)  # returns quietly: the client is gone, nothing to answer
    assert log == ["cancelled"] and not outer.cancelled()


async def test_a_finished_request_lets_go_of_the_disconnect_future() -> None:
    proto = FutureProto()

    async def work() -> str:
        return "answered"

    await _until_disconnect(work(), proto)
    assert proto.gone.cancelled()  # no callback left behind to cancel a later request


async def test_a_cancellation_from_elsewhere_is_not_swallowed() -> None:
    proto, log = FutureProto(), []
    outer = asyncio.ensure_future(_until_disconnect(_stalled(log), proto))
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert log == ["cancelled"]


async def test_a_disconnect_that_is_a_coroutine_uses_a_work_task_and_a_watcher() -> None:
    proto, log = CoroutineProto(), []
    outer = asyncio.ensure_future(_until_disconnect(_stalled(log), proto))
    await asyncio.sleep(0.01)
    proto.event.set()
    await asyncio.wait_for(outer, 5)
    assert log == ["cancelled"] and not outer.cancelled()


async def test_outside_a_plain_task_the_work_still_runs_and_is_cancelled() -> None:
    class Pseudo(asyncio.Task):  # a scheduler's task whose cancel() does nothing, as granian's Rust one
        def cancel(self, msg=None) -> bool:  # noqa: ARG002
            return False

    proto, log = FutureProto(), []
    loop = asyncio.get_running_loop()
    outer = Pseudo(_until_disconnect(_stalled(log), proto), loop=loop)
    await asyncio.sleep(0.01)
    proto.gone.set_result(None)
    await asyncio.wait_for(outer, 5)
    assert log == ["cancelled"]


# -- stopping the shipped server ---------------------------------------------------------------------

async def _in_flight(stack, upstream, model: str):
    """A chat call that the upstream holds; returns once the upstream has it."""
    from .harness import policy

    seen = len(upstream.requests)
    call = asyncio.ensure_future(stack.post("/v1/chat/completions", {
        "model": "", "messages": [{"role": "user", "content": "hi"}], "policy_ir": policy(["family_eq", model])}))
    for _ in range(1000):
        if len(upstream.requests) > seen or call.done():
            break
        await asyncio.sleep(0.01)
    assert len(upstream.requests) > seen and not call.done()
    return call


async def _finish_stop(stack) -> None:
    await stack.router.close()
    for up in stack.ups.values():
        await up.stop()


async def test_stop_lets_a_call_in_flight_finish(tmp_path) -> None:
    from unhardcoded.testing.upstreams import Delay, Reply

    from .harness import start_stack

    stack = await start_stack(tmp_path, server="granian", shutdown_grace_s=10)
    try:
        stack.openai.script("gpt-5.5", Delay(400), Reply("finished in time"))
        call = await _in_flight(stack, stack.openai, "gpt-5.5")
        stack.server.stop()
        await asyncio.wait_for(stack.task, 30)
        status, body = await call
        assert stack.server.cut == 0
        assert status == 200 and body["choices"][0]["message"]["content"] == "finished in time"
    finally:
        await _finish_stop(stack)


async def test_stop_cuts_off_a_call_that_outlives_the_grace(tmp_path) -> None:
    from unhardcoded.testing.upstreams import Stall

    from .harness import start_stack

    stack = await start_stack(tmp_path, server="granian", shutdown_grace_s=1)
    try:
        stack.openai.script("gpt-5.5", Stall())
        call = await _in_flight(stack, stack.openai, "gpt-5.5")
        stack.server.stop()
        await asyncio.wait_for(stack.task, 30)  # not forever: the grace is one second
        status, body = await asyncio.wait_for(call, 30)
        assert stack.server.cut == 1
        # the caller learns why, in the OpenAI error shape, and may retry elsewhere
        assert status == 503 and body["error"]["code"] == "shutting_down"
        stack.store.flush()
        rows, _ = stack.store.list(status="shutdown")
        assert len(rows) == 1  # recorded as cut off by the shutdown, not as a client that left
    finally:
        await _finish_stop(stack)
