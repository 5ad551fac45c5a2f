"""AsyncLLMEngine on the fake engine: streaming, early exit aborts, admission errors, queue
bound, observer events, shutdown."""

from __future__ import annotations

import asyncio

import pytest
from fake_engine import FakeEngine

from tritium.engine.async_engine import (
    AsyncLLMEngine,
    EngineDeadError,
    QueueFullError,
    RequestAbortedError,
)
from tritium.engine.sampling_params import SamplingParams


class Recorder:
    def __init__(self):
        self.first, self.tokens, self.finished = [], 0, []

    def on_first_token(self, ttft_s, num_prompt_tokens):
        self.first.append((ttft_s, num_prompt_tokens))

    def on_new_tokens(self, num_tokens, interval_s):
        self.tokens += num_tokens

    def on_finished(self, e2e_s, finish_reasons):
        self.finished.append(finish_reasons)


def run(coro):
    return asyncio.run(coro)


def test_generate_streams_cumulative_outputs():
    rec = Recorder()
    engine = AsyncLLMEngine(FakeEngine(), observer=rec)

    async def main():
        outs = [o async for o in engine.generate("hello", SamplingParams(max_tokens=5,
                                                                        temperature=0), "r1")]
        engine.shutdown()
        return outs

    outs = run(main())
    lengths = [len(o.outputs[0].token_ids) for o in outs]
    assert lengths == sorted(lengths) and lengths[-1] == 5
    assert outs[-1].finished and not any(o.finished for o in outs[:-1])
    assert outs[-1].outputs[0].finish_reason == "length"
    assert rec.first[0][1] == 5 and rec.tokens == 5 and rec.finished == [["length"]]


def test_early_exit_aborts_and_frees_blocks():
    fake = FakeEngine(step_delay=0.01)
    rec = Recorder()
    engine = AsyncLLMEngine(fake, observer=rec)

    async def main():
        async for out in engine.generate("x", SamplingParams(max_tokens=500), "r1"):
            if len(out.outputs[0].token_ids) >= 3:
                break
        for _ in range(200):  # the abort is applied before the engine's next step
            if not fake.has_unfinished_requests():
                break
            await asyncio.sleep(0.01)
        engine.shutdown()

    run(main())
    assert not fake.has_unfinished_requests() and fake.free_blocks == fake.num_blocks
    assert rec.finished == [["abort"]]


def test_admission_errors():
    engine = AsyncLLMEngine(FakeEngine(max_model_len=16, step_delay=0.01))

    async def main():
        with pytest.raises(ValueError, match="does not fit"):
            await engine.add_request("long", "x" * 40, SamplingParams())
        stream = await engine.add_request("dup", "x", SamplingParams(max_tokens=50))
        with pytest.raises(ValueError, match="already in use"):
            await engine.add_request("dup", "y", SamplingParams())
        engine.abort("dup")
        with pytest.raises(RequestAbortedError):
            async for _ in stream:
                pass
        engine.shutdown()
        with pytest.raises(EngineDeadError):
            await engine.add_request("late", "x", SamplingParams())

    run(main())


def test_waiting_queue_is_bounded():
    engine = AsyncLLMEngine(FakeEngine(max_num_seqs=1, step_delay=0.01), max_waiting_requests=2)

    async def main():
        results = await asyncio.gather(
            *(engine.add_request(f"r{i}", "abc", SamplingParams(max_tokens=30))
              for i in range(6)), return_exceptions=True)
        engine.shutdown()
        return results

    results = run(main())
    full = [r for r in results if isinstance(r, QueueFullError)]
    # one may already run when the others arrive; two more wait; the rest are refused
    assert len(full) in (3, 4), results
    assert all(not isinstance(r, Exception) for r in results[:2])
    assert "busy" in str(full[0])


def test_shutdown_fails_open_streams():
    engine = AsyncLLMEngine(FakeEngine(step_delay=0.01))

    async def main():
        stream = await engine.add_request("r", "abc", SamplingParams(max_tokens=1000))
        await stream.__anext__()
        await asyncio.to_thread(engine.shutdown)
        with pytest.raises(EngineDeadError):
            async for _ in stream:
                pass
        assert not engine.is_running

    run(main())


def test_engine_crash_fails_streams_and_later_adds():
    fake = FakeEngine()

    def boom():
        raise RuntimeError("device lost")

    fake.step = boom
    engine = AsyncLLMEngine(fake)

    async def main():
        stream = await engine.add_request("r", "abc", SamplingParams())
        with pytest.raises(EngineDeadError, match="device lost"):
            async for _ in stream:
                pass
        with pytest.raises(EngineDeadError):
            await engine.add_request("r2", "abc", SamplingParams())
        engine.shutdown()

    run(main())
    assert "device lost" in str(engine.dead_error)
