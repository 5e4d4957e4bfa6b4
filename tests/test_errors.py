"""The table of foreign exceptions -> typed errors (hubtune.errors.FOREIGN_ERRORS), case by case, each with
an exception raised for real by the library that raises it; and the CLI's handling of what escapes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub.errors import HfHubHTTPError

from hubtune import config as cfg
from hubtune.cli import main
from hubtune.config import resolve_builtin
from hubtune.errors import (
    FOREIGN_ERRORS,
    DataError,
    HubBadResponseError,
    HubServerError,
    HubServiceError,
    HubTimeoutError,
    ModelFolderError,
    OutOfMemoryError,
    OutputPathError,
    PeerStoppedError,
    RunLockedError,
    translate,
)

API = "https://hub.example/api/models/acme/base"
COMMIT = "https://hub.example/api/models/alice/x/commit/main"


def raised(fn, *args, **kwargs) -> BaseException:
    try:
        fn(*args, **kwargs)
    except BaseException as err:  # noqa: BLE001 - the point is to catch what the library raises
        return err
    raise AssertionError(f"{fn} raised nothing")


def http_error(status: int, url: str = API) -> HfHubHTTPError:
    from huggingface_hub.utils import hf_raise_for_status

    response = httpx2.Response(status, request=httpx2.Request("GET", url), headers={"X-Error-Message": "overloaded"})
    return raised(hf_raise_for_status, response)


def timeout(method: str, url: str) -> httpx2.TimeoutException:
    with httpx2.Client(transport=httpx2.MockTransport(lambda request: (_ for _ in ()).throw(
            httpx2.ReadTimeout("timed out", request=request)))) as client:
        return raised(client.request, method, url)


def remote_code_error(tmp_path: Path) -> ValueError:
    from transformers import AutoConfig

    folder = tmp_path / "remote"
    folder.mkdir()
    c = json.loads((Path(resolve_builtin("hubtune:tiny-llama")) / "config.json").read_text())
    c.update(model_type="acme_mystery", auto_map={"AutoConfig": "modeling_acme.AcmeConfig"})
    (folder / "config.json").write_text(json.dumps(c))
    return raised(AutoConfig.from_pretrained, str(folder))


def damaged_weights(tmp_path: Path) -> Exception:
    from safetensors import safe_open

    weights = (Path(resolve_builtin("hubtune:tiny-llama")) / "model.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(weights[: len(weights) // 3])
    return raised(safe_open, str(cut), framework="pt")


def cases(tmp_path: Path) -> list[tuple[str, BaseException, dict, type, list[str]]]:
    """(table row, a real exception, context, the typed error, what its message must say)."""
    from transformers import AutoConfig

    run = cfg.build({"model": {"quantization": "none"}, "data": {"max_seq_len": 2048},
                     "training": {"micro_batch_size": 4, "gradient_accumulation_steps": 2,
                                  "gradient_checkpointing": False}})
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    return [
        ("torch.OutOfMemoryError", torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB"),
         {"config": run}, OutOfMemoryError,
         ["out of accelerator memory (CUDA out of memory. Tried to allocate 8.00 GiB)",
          "lower training.micro_batch_size (now 4)", "effective batch of 8", "data.max_seq_len (now 2048)",
          "training.gradient_checkpointing (now off", "model.quantization: nf4 (now none)",
          "data.max_length_percentile: 99"]),
        ("torch.OutOfMemoryError", RuntimeError("CUDA error: out of memory"), {}, OutOfMemoryError,
         ["lower training.micro_batch_size", "model.quantization: nf4"]),
        ("httpx TimeoutException", timeout("GET", API), {}, HubTimeoutError,
         [f"did not answer GET {API} within 10 s (HF_HUB_ETAG_TIMEOUT=10)", "export HF_HUB_ETAG_TIMEOUT=60"]),
        ("httpx TimeoutException", timeout("POST", COMMIT), {"attempts": 1}, HubTimeoutError,
         [f"did not answer POST {COMMIT} within 10 s (HF_HUB_DOWNLOAD_TIMEOUT=10)"]),
        ("HfHubHTTPError 5xx", http_error(503), {"attempts": 4}, HubServerError,
         [f"answered GET {API} with 503 (overloaded) on 4 tries (HUBTUNE_HUB_RETRIES=3)",
          "Run the same command again later"]),
        ("HfHubHTTPError 5xx", http_error(429), {}, HubServerError, ["with 429", "rate-limiting"]),
        ("httpx TransportError", raised(httpx2.Client().get, "http://127.0.0.1:9/api/whoami-v2"), {},
         HubServiceError, ["cannot reach GET http://127.0.0.1:9/api/whoami-v2 (ConnectError", "HF_ENDPOINT"]),
        ("JSONDecodeError / UnicodeDecodeError", raised(json.loads, "<html>"), {"endpoint": f"GET {API}"},
         HubBadResponseError, [f"answered GET {API} with a body that is not JSON (JSONDecodeError"]),
        ("JSONDecodeError / UnicodeDecodeError", raised(b"\xff\xfe\x80".decode, "utf-8"), {"endpoint": f"GET {API}"},
         HubBadResponseError, ["not JSON (UnicodeDecodeError"]),
        ("safetensors SafetensorError", damaged_weights(tmp_path), {"model": "acme/base"}, ModelFolderError,
         ["weights file in acme/base is damaged", "Download it again"]),
        ("trust_remote_code", remote_code_error(tmp_path), {"model": "acme/mystery"}, ModelFolderError,
         ["acme/mystery needs modelling code of its own", "model.trust_remote_code is off",
          "runs that Python code on this machine", "pin model.revision"]),
        ("without config.json", raised(AutoConfig.from_pretrained, str(tmp_path / "empty")), {}, ModelFolderError,
         [f"Unrecognized model in {tmp_path / 'empty'}", "needs config.json, safetensors weights and tokenizer"]),
        ("OSError on a path", raised(open, tmp_path / "a-file" / "out.jsonl", "w"), {}, OutputPathError,
         [f"{tmp_path / 'a-file' / 'out.jsonl'}: Not a directory", "choose a path"]),
        ("RecursionError", raised(json.loads, "[" * 100_000), {}, DataError, ["nested too deeply"]),
        ("weights_only refusal", pickled_refusal(tmp_path), {}, ModelFolderError,
         ["a pickled weights file was refused", "hubtune does not load such a file"]),
        # As gloo words it in rank 0 when rank 1 is killed (tests/test_distributed.py kills one for real).
        ("gloo / NCCL", RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read "
                                     "error [127.0.0.1]:6564: Connection reset by peer. This is typically caused by "
                                     "a remote worker hanging or bugs in the application."), {}, PeerStoppedError,
         ["another process of this run stopped first", "(gloo: Connection reset by peer)", "by rank",
          "hubtune train --resume RUN_FOLDER --num-processes N"]),
        ("gloo / NCCL", RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited or there was a "
                                     "network error, NCCL version 2.21.5"), {}, PeerStoppedError,
         ["(NCCL: remote process exited or there was a network error)"]),
    ]


def pickled_refusal(tmp_path: Path) -> BaseException:
    import datetime

    import torch

    torch.save({"saved": datetime.date(2026, 1, 1)}, tmp_path / "adapter_model.bin")  # more than tensors
    err = raised(torch.load, tmp_path / "adapter_model.bin", weights_only=True)
    assert "will likely succeed" in str(err)  # torch's own advice, which the typed error must not repeat
    return err


def test_each_row_of_the_table(tmp_path):
    seen = set()
    for row, err, context, kind, says in cases(tmp_path):
        typed = translate(err, **context)
        assert type(typed) is kind, (row, err, typed)
        assert typed.__cause__ is err
        assert "likely succeed" not in str(typed) and "unexpected" not in str(typed)
        for text in says:
            assert text in str(typed), (row, text, str(typed))
        seen |= {name for name, matches, _ in FOREIGN_ERRORS if matches(err, context)}
    assert seen == {name for name, _, _ in FOREIGN_ERRORS}, "every row is exercised"


def test_what_the_table_does_not_know_stays_as_it_is(tmp_path):
    assert translate(KeyError("x")) is None
    assert translate(http_error(404)) is None  # repo and revision errors are hubtune.hub's, with the repo id
    assert translate(raised(json.loads, "<html>")) is None  # not from a Hub call: a data problem, not the Hub's
    locked = RunLockedError("busy")
    assert translate(locked) is locked


def test_the_cli_prints_one_line_for_an_unexpected_error(monkeypatch, capsys):
    from hubtune import licence

    monkeypatch.setattr(licence, "check", lambda *a, **k: {}["missing"])
    monkeypatch.delenv("HUBTUNE_DEBUG", raising=False)
    assert main(["check", "hubtune:tiny-llama"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected KeyError: 'missing'") and "HUBTUNE_DEBUG=1" in err
    monkeypatch.setenv("HUBTUNE_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["check", "hubtune:tiny-llama"])


def test_the_cli_translates_a_foreign_error(monkeypatch, capsys):
    from hubtune import licence

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(licence, "check", out_of_memory)
    monkeypatch.delenv("HUBTUNE_DEBUG", raising=False)
    assert main(["check", "hubtune:tiny-llama"]) == 2
    assert capsys.readouterr().err.startswith("error: out of accelerator memory (CUDA out of memory.). To fit:")
