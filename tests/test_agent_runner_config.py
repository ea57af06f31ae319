"""The agents process refuses a run it cannot serve with an answer that says what to set."""

from __future__ import annotations

import os

import pytest
import trio

from workbooks.agent.runner import AgentRunner, ModelNotConfigured, RunnerState
from workbooks.store.db import Store


@pytest.mark.parametrize("env", [
    {},  # nothing configured: the vendor URL needs a key, and no model is named
    {"WB_LLM_BASE_URL": "http://127.0.0.1:9/v1", "WB_LLM_API_KEY": "k"},  # no model
    {"WB_LLM_PROVIDER": "gemini", "WB_LLM_MODEL": "m"},  # unknown provider
])
def test_an_unconfigured_model_is_a_503_with_a_hint_and_no_run_is_created(tmp_path, monkeypatch, env):
    for k in list(os.environ):
        if k.startswith("WB_LLM_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    store = Store(tmp_path)
    store.create_tenant("dev")
    store.close()

    async def main():
        async with trio.open_nursery() as n:
            runner = AgentRunner(RunnerState(data_dir=tmp_path, pool_endpoint=None), n, publish=None)
            with pytest.raises(ModelNotConfigured) as e:
                await runner.on_start("dev", task="hello")
            n.cancel_scope.cancel()
        return e.value

    err = trio.run(main)
    assert err.http_status == 503 and err.code == "llm_not_configured"
    assert "WB_LLM" in err.message + err.hint
    assert not (tmp_path / "wb-runs" / "dev").exists() or not any((tmp_path / "wb-runs" / "dev").iterdir())
