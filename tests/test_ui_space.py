"""The app as it runs on a Space (SPACE_ID set), tested to the boundary: the Hugging Face login button
instead of a token field, the storage warning, sign-in required to start, and each user's runs private."""

from __future__ import annotations

import pytest

from hubtune import config as cfg
from hubtune.runs import RunFolder

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out


@pytest.fixture
def space_app(tmp_path, monkeypatch):
    import gradio.oauth as oauth

    from hubtune.ui import build_app

    # What a Space with `hf_oauth: true` sets; the provider is only contacted when someone logs in.
    monkeypatch.setenv("SPACE_ID", "alice/hubtune")
    monkeypatch.setenv("SYSTEM", "spaces")
    for name, value in {"OAUTH_CLIENT_ID": "client", "OAUTH_CLIENT_SECRET": "secret",
                        "OAUTH_SCOPES": "openid profile read-repos write-repos manage-repos gated-repos",
                        "OPENID_PROVIDER_URL": "http://127.0.0.1:9"}.items():
        monkeypatch.setenv(name, value)
        monkeypatch.setattr(oauth, name, value)
    root = tmp_path / "runs"
    RunFolder.create(root / "bobs-run", cfg.RunConfig(), owner="bob")
    app = build_app(root)
    app.queue().launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    app.root = root
    yield app
    app.runner.close()
    app.close()


def test_space_page_logs_in_with_hugging_face_and_keeps_runs_private(space_app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    config = space_app.config
    labels = {c["props"].get("label") for c in config["components"]}
    buttons = [c["props"].get("value") for c in config["components"] if c["type"] == "button"]
    assert "Sign in with Hugging Face" in buttons  # gr.LoginButton renders as a button
    assert "Hugging Face token" not in labels
    page_text = " ".join(str(c["props"].get("value")) for c in config["components"] if c["type"] == "markdown")
    assert "Runs vanish when this Space restarts" in page_text

    client = Client(space_app.local_url, verbose=False)
    table, run, other, note = client.predict(None, api_name="/runs")
    assert table["data"] == [] and "No runs yet" in note  # bob's run is not shown to a signed-out visitor
    message = client.predict("model:\n  id: hubtune:tiny-llama\n", "", api_name="/start")
    assert "Sign in with Hugging Face to start a run" in message
    with pytest.raises(AppError, match="Sign in with Hugging Face"):
        client.predict(str(space_app.root / "bobs-run"), "hello", [], [], "", 0, 1, 16, api_name="/chat")
