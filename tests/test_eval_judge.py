"""The LLM judge against real HTTP servers on 127.0.0.1: a scripted OpenAI-compatible server for
known verdicts (aggregation, position swap, retries, outages, resuming), `transformers serve` at the
boundary, and a local transformers model."""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from hubtune.config import resolve_builtin
from hubtune.evaluation.cache import AnswerCache
from hubtune.evaluation.intervals import bootstrap_mean, wilson
from hubtune.evaluation.judge import Judge, judge_answers, parse_scores, parse_verdict
from judge_server import ScriptedJudge

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Rubric scores the scripted judge gives each answer; None: a reply with no scores in it.
SCORES = {"T0": (5, 5, 5), "T1": (4, 3, 5), "T2": (2, 2, 2), "T3": (5, 4, 4), "T4": None, "T5": (3, 3, 3),
          "B0": (1, 1, 1), "B1": (2, 2, 3), "B2": (3, 3, 3), "B3": (1, 2, 1), "B4": (2, 2, 2), "B5": None}
# Pairwise behaviour per item: prefers tuned, prefers base, always the first answer, always a tie,
# and for item 5 a verdict when base comes first but garbage when tuned comes first.
PAIRWISE = {0: "tuned", 1: "tuned", 2: "base", 3: "first", 4: "tie", 5: "garbage-when-tuned-first"}


def scripted(messages: list[dict]) -> str:
    user = messages[-1]["content"]
    graded = re.search(r"\[Answer to grade\]\n(\S+)", user)
    if graded:
        scores = SCORES[graded.group(1)]
        if scores is None:
            return "I think this answer is quite good overall."
        h, a, f = scores
        return f"The answer is fine.\nHelpfulness: {h}, Accuracy: {a}, Format: {f}"
    first = re.search(r"\[Assistant A\]\n(\S+)", user).group(1)
    item, tuned_first = int(first[1:]), first.startswith("T")
    rule = PAIRWISE[item]
    if rule == "tuned":
        return "Assistant " + ("A" if tuned_first else "B") + " is better. [[" + ("A" if tuned_first else "B") + "]]"
    if rule == "base":
        return "[[B]]" if tuned_first else "[[A]]"
    if rule == "first":
        return "The first one. [[A]]"
    if rule == "tie":
        return "Equally good: [[C]]"
    return "hmm, [[A]] or maybe [[B]]" if tuned_first else "[[B]]"


ITEMS = [{"question": f"question {i}", "reference": f"reference {i}", "tuned": f"T{i}", "base": f"B{i}"}
         for i in range(6)]


@pytest.fixture
def server():
    s = ScriptedJudge(scripted).start()
    yield s
    s.stop()


def fast_judge(url: str, **kw) -> Judge:
    return Judge(url, model="scripted", timeout=kw.pop("timeout", 5.0), retries=kw.pop("retries", 2),
                 backoff=kw.pop("backoff", 0.01), **kw)


def overall(scores):
    return [sum(s) / 3 for s in scores if s is not None]


def test_rubric_means_cis_wins_and_unparsable_counts_from_known_verdicts(server, tmp_path):
    result = judge_answers(fast_judge(server.url), ITEMS, AnswerCache(tmp_path / "judge.jsonl"))

    assert (result["items"], result["judged"], result["partial"], result["error"]) == (6, 6, False, None)
    assert len(server.requests) == 24  # 2 single grades + 2 pairwise orders per item
    tuned = result["single"]["tuned"]
    want = overall(SCORES[f"T{i}"] for i in range(6))
    assert tuned["overall"]["n"] == 5 and tuned["unparsable"] == 1
    assert tuned["overall"]["mean"] == pytest.approx(statistics.fmean(want))
    # Judge scores are graded: a bootstrap interval that stays inside the scores given.
    assert tuned["overall"] == bootstrap_mean(want) and tuned["overall"]["interval"] == "bootstrap"
    lower, upper = tuned["overall"]["ci95"]
    assert min(want) <= lower < tuned["overall"]["mean"] < upper <= max(want)
    assert tuned["accuracy"]["mean"] == pytest.approx((5 + 3 + 2 + 4 + 3) / 5)
    base = result["single"]["base"]
    assert base["unparsable"] == 1 and base["overall"]["mean"] == pytest.approx(statistics.fmean(
        overall(SCORES[f"B{i}"] for i in range(6))))

    pw = result["pairwise"]
    # Items 0, 1: tuned wins in both orders; 2: base wins in both; 3: the first answer always wins,
    # so the orders disagree and it is a tie; 4: tie in both; 5: one order unparsable.
    assert (pw["n"], pw["wins"], pw["ties"], pw["losses"]) == (5, 2, 2, 1)
    assert (pw["win_rate"], pw["tie_rate"], pw["loss_rate"]) == pytest.approx((0.4, 0.4, 0.2))
    assert pw["ci95"] == {"win_rate": list(wilson(2, 5)), "tie_rate": list(wilson(2, 5)),
                          "loss_rate": list(wilson(1, 5))}
    assert pw["position_consistency"] == pytest.approx(4 / 5)
    assert pw["first_position_preferred"] == pytest.approx(5 / 9)
    assert (pw["unparsable"], pw["unparsable_items"]) == (1, 1)


def test_both_orders_are_asked_with_the_answers_swapped(server, tmp_path):
    judge_answers(fast_judge(server.url), ITEMS[:1], AnswerCache(tmp_path / "judge.jsonl"))
    pairwise = [m[-1]["content"] for m in server.requests if "[Assistant A]" in m[-1]["content"]]
    firsts = sorted(re.search(r"\[Assistant A\]\n(\S+)", p).group(1) for p in pairwise)
    seconds = sorted(re.search(r"\[Assistant B\]\n(\S+)", p).group(1) for p in pairwise)
    assert firsts == seconds == ["B0", "T0"]
    assert all(m[0]["role"] == "system" and "reference 0" in m[-1]["content"] for m in server.requests)


def test_a_judge_that_always_picks_the_first_answer_produces_ties_not_wins(server, tmp_path):
    server.script = lambda messages: "[[A]]" if "[Assistant A]" in messages[-1]["content"] else \
        "Helpfulness: 3, Accuracy: 3, Format: 3"
    pw = judge_answers(fast_judge(server.url), ITEMS, AnswerCache(tmp_path / "judge.jsonl"))["pairwise"]
    assert (pw["wins"], pw["ties"], pw["losses"]) == (0, 6, 0)
    assert pw["first_position_preferred"] == 1.0 and pw["position_consistency"] == 0.0


def test_failed_calls_are_retried_with_backoff(server, tmp_path):
    server.fail_next(2)
    started = time.monotonic()
    result = judge_answers(fast_judge(server.url, retries=3, backoff=0.2), ITEMS[:1], AnswerCache(tmp_path / "j.jsonl"))
    assert (result["judged"], result["partial"]) == (1, False)
    assert len(server.requests) == 4 + 2
    assert time.monotonic() - started >= 0.2 + 0.4  # two waits: backoff, then twice the backoff


def test_a_judge_that_is_down_gives_a_partial_result_not_a_crash(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    result = judge_answers(fast_judge(f"http://127.0.0.1:{port}/v1", retries=2), ITEMS,
                           AnswerCache(tmp_path / "j.jsonl"))
    assert (result["judged"], result["items"], result["partial"]) == (0, 6, True)
    assert "failed 3 times" in result["error"]
    assert result["pairwise"]["n"] == 0 and result["single"]["tuned"]["overall"]["mean"] is None


def test_a_slow_judge_times_out_and_is_reported_partial(server, tmp_path):
    server.delay = 3.0
    started = time.monotonic()
    result = judge_answers(fast_judge(server.url, timeout=0.3, retries=1), ITEMS[:2], AnswerCache(tmp_path / "j.jsonl"))
    assert result["partial"] and result["judged"] == 0 and "failed 2 times" in result["error"]
    assert time.monotonic() - started < 2.5


def test_a_reply_that_is_not_a_chat_completion_is_a_failure(server, tmp_path):
    server.body = b"<html>502 Bad Gateway</html>"
    result = judge_answers(fast_judge(server.url, retries=1), ITEMS[:1], AnswerCache(tmp_path / "j.jsonl"))
    assert result["partial"] and result["judged"] == 0 and len(server.requests) == 2


def test_a_rerun_resumes_from_cached_replies(server, tmp_path):
    cache_file = tmp_path / "judge.jsonl"
    served = {"n": 0}

    def down_after_six(messages):
        served["n"] += 1
        if served["n"] == 6:
            server.fail_next(10**6)  # the judge goes down after its sixth reply
        return scripted(messages)

    server.script = down_after_six
    judge = fast_judge(server.url, retries=1)
    first = judge_answers(judge, ITEMS[:3], AnswerCache(cache_file))
    assert (first["judged"], first["partial"]) == (1, True)  # item 0 complete, item 1 half done
    assert len(AnswerCache(cache_file).entries) == 6

    server.fail_next(0)
    server.script = scripted
    before = len(server.requests)
    second = judge_answers(judge, ITEMS[:3], AnswerCache(cache_file))
    assert (second["judged"], second["partial"]) == (3, False)
    assert len(server.requests) - before == 3 * 4 - 6  # only the calls not answered before


def test_parsers_accept_the_rubric_line_and_reject_ambiguity():
    assert parse_scores("Good.\nHelpfulness: 4, Accuracy: 5, Format: 3") == {"helpfulness": 4, "accuracy": 5, "format": 3}
    assert parse_scores("**Helpfulness**: 2\n**Accuracy**: [[3]]\nFormat adherence: 5") == {
        "helpfulness": 2, "accuracy": 3, "format": 5}
    assert parse_scores("Helpfulness: 4.5, Accuracy: 5, Format: 3") is None
    assert parse_scores("Helpfulness: 6, Accuracy: 5, Format: 3") is None
    assert parse_scores("Helpfulness: 4, Accuracy: 5") is None
    assert parse_verdict("so [[B]]") == "B" and parse_verdict("[[ C ]]") == "C"
    assert parse_verdict("[[A]] or [[B]]") is None and parse_verdict("A is better") is None


def test_local_transformers_model_as_judge(tmp_path):
    judge = Judge(resolve_builtin("hubtune:tiny-llama"), retries=0, max_tokens=12)
    result = judge_answers(judge, ITEMS[:1], AnswerCache(tmp_path / "j.jsonl"))
    # The tiny model writes invoices, not verdicts: every reply arrives and none can be parsed.
    assert (result["judged"], result["partial"]) == (1, False)
    assert result["single"]["tuned"]["unparsable"] == result["single"]["base"]["unparsable"] == 1
    assert result["pairwise"]["unparsable"] == 2 and len(AnswerCache(tmp_path / "j.jsonl").entries) == 4


@pytest.mark.skipif(shutil.which("transformers", path=str(Path(sys.executable).parent)) is None
                    and shutil.which("transformers") is None,
                    reason="`transformers serve` needs the transformers[serving] extra (pip install 'hubtune[dev]')")
@pytest.mark.slow
def test_transformers_serve_as_an_openai_compatible_judge(tmp_path):
    model = resolve_builtin("hubtune:tiny-llama")
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    port = free_port()
    proc = subprocess.Popen([exe, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, "transformers serve exited"
                assert time.monotonic() < deadline, "transformers serve did not come up in 90 s"
                time.sleep(0.5)
        judge = Judge(f"http://127.0.0.1:{port}/v1", model=model, timeout=30, retries=1, backoff=0.1, max_tokens=16)
        result = judge_answers(judge, ITEMS[:2], AnswerCache(tmp_path / "j.jsonl"))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # A real endpoint answered every call (nothing partial); the tiny base cannot grade, so the
    # replies are counted as unparsable rather than crashing or being scored.
    assert (result["judged"], result["partial"], result["error"]) == (2, False, None)
    assert len(AnswerCache(tmp_path / "j.jsonl").entries) == 8
    assert result["single"]["tuned"]["unparsable"] + result["single"]["base"]["unparsable"] == 4


def test_a_judge_folder_that_does_not_exist_is_an_error_before_any_generation(make_run):
    from hubtune.errors import EvalError
    from hubtune.evaluation import evaluate

    def no_model_loading(message: str) -> None:
        assert not message.startswith("loading"), message

    run = make_run()
    with pytest.raises(EvalError, match="no such model folder"):
        evaluate(run, judge="./no-such-judge", log=no_model_loading)
    assert not (run / "eval_cache").exists()  # nothing was generated


def test_a_base_url_judge_gets_its_own_key_never_the_hub_token(monkeypatch):
    echo = ScriptedJudge(lambda messages: "ok").start()
    try:
        monkeypatch.setenv("HF_TOKEN", "hf_the_users_hub_token_0000000000")
        monkeypatch.delenv("HUBTUNE_JUDGE_API_KEY", raising=False)
        fast_judge(echo.url).complete([{"role": "user", "content": "hi"}])
        monkeypatch.setenv("HUBTUNE_JUDGE_API_KEY", "judge-key-1")
        fast_judge(echo.url).complete([{"role": "user", "content": "hi"}])
    finally:
        echo.stop()
    assert echo.authorizations == ["Bearer EMPTY", "Bearer judge-key-1"]
