"""Each quality step on crafted data: what it removes, what it keeps, how it is counted."""

from __future__ import annotations

import re
import unicodedata

import pytest
from data_rows import alpaca_rows, section, sentence, write_jsonl

from hubtune.data import prepare
from hubtune.data.dedup import near_duplicates
from hubtune.errors import DataError


def shingle_set(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def exact_jaccard(a: str, b: str) -> float:
    x, y = shingle_set(a), shingle_set(b)
    return len(x & y) / len(x | y)


def answers(prepared) -> list[str]:
    return [r["completion"][0]["content"] for r in prepared.train]


def test_exact_duplicates_compare_normalised_text_but_keep_the_original(tmp_path, chat_tokenizer):
    first = {"instruction": "Total of  invoice 7?", "input": "", "output": "It is Forty dollars."}
    rows = [first,
            {"instruction": "total of invoice 7?", "input": "", "output": "it is forty   dollars."},  # case, spaces
            {"instruction": "Total of invoice ７?", "input": "", "output": "It is Forty dollars."},  # full-width 7
            {"instruction": "Total of invoice 8?", "input": "", "output": "It is Forty dollars."}]
    prepared = prepare(section(write_jsonl(tmp_path / "d.jsonl", rows)), chat_tokenizer)
    r = prepared.report
    assert (r["total"], r["exact_duplicates"], r["kept"]) == (4, 2, 2)
    assert prepared.train[0]["prompt"][0]["content"] == "Total of  invoice 7?"  # not normalised
    assert [p["removed"].rsplit(" ", 1)[1] for p in r["exact_duplicate_examples"]] == ["2", "3"]
    # Without the exact step, the near-duplicate step still finds them (similarity 1).
    near_only = prepare(section(tmp_path / "d.jsonl", dedup_exact=False), chat_tokenizer).report
    assert (near_only["exact_duplicates"], near_only["near_duplicates"], near_only["kept"]) == (0, 2, 2)
    off = prepare(section(tmp_path / "d.jsonl", dedup_exact=False, near_dup_threshold=None), chat_tokenizer).report
    assert off["kept"] == 4


def test_near_duplicates_are_found_and_the_first_is_kept(tmp_path, chat_tokenizer):
    base = sentence(1, 60)
    words = base.split()
    one_word_changed = " ".join(words[:20] + ["different"] + words[21:])
    two_words_changed = " ".join(words[:10] + ["other"] + words[11:40] + ["else"] + words[41:])
    half_new = " ".join(words[:30] + sentence(2, 30).split())
    rows = [{"instruction": "Summarise.", "input": t, "output": "A short summary of it."}
            for t in (base, sentence(3, 60), one_word_changed, half_new, two_words_changed)]
    prepared = prepare(section(write_jsonl(tmp_path / "n.jsonl", rows)), chat_tokenizer)
    r = prepared.report
    assert r["near_duplicates"] == 2 and r["kept"] == 3
    assert [row["prompt"][0]["content"].split("\n\n")[1] for row in prepared.train] == [base, sentence(3, 60), half_new]
    pairs = r["near_duplicate_examples"]
    assert {p["removed"]["origin"].rsplit(" ", 1)[1] for p in pairs} == {"3", "5"}
    assert all(p["kept"]["origin"].endswith("line 1") for p in pairs)
    for p in pairs:  # the similarity shown is the exact Jaccard of word 3-shingles
        text = rows[int(p["removed"]["origin"].rsplit(" ", 1)[1]) - 1]
        full = lambda row: f"user: {row['instruction']}\n\n{row['input']}\n{row['output']}"  # noqa: E731
        assert p["similarity"] == pytest.approx(exact_jaccard(full(rows[0]), full(text)), abs=1e-4)
        assert p["similarity"] >= 0.8
    loose = prepare(section(tmp_path / "n.jsonl", near_dup_threshold=None), chat_tokenizer).report
    assert (loose["near_duplicates"], loose["kept"]) == (0, 5)


def test_near_duplicate_threshold_is_exact_at_the_boundary():
    base = sentence(5, 60).split()
    texts = [" ".join(base)]
    for k in range(1, 12):  # k words replaced, spread out: similarity falls as k grows
        changed = list(base)
        for j in range(k):
            changed[3 + j * 5] = f"swap{j}"
        texts.append(" ".join(changed))
    sims = [exact_jaccard(texts[0], t) for t in texts[1:]]
    threshold = 0.6
    found = near_duplicates(texts[:1] + texts[1:], threshold=threshold)
    # Each changed text is compared with the kept original (and earlier kept texts): it goes iff
    # its best exact similarity to a kept text reaches the threshold.
    kept = [0]
    expected = set()
    for i, t in enumerate(texts[1:], 1):
        if max(exact_jaccard(texts[j], t) for j in kept) >= threshold:
            expected.add(i)
        else:
            kept.append(i)
    assert {d.index for d in found} == expected
    assert 0 < len(expected) < len(sims)  # the boundary falls inside the range tried


def test_too_short_counts_response_tokens_of_the_base_tokenizer(tmp_path, chat_tokenizer):
    outputs = ["Yes", "", "It is nine dollars and ten cents.", "Paris", "Two lamps, one chair."]
    rows = [{"instruction": f"Question {i}?", "input": "", "output": o} for i, o in enumerate(outputs)]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    n_tokens = [len(chat_tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs]
    for minimum in (1, 2, 4):
        prepared = prepare(section(path, min_response_tokens=minimum, short_relative=False), chat_tokenizer)
        expected = [o for o, n in zip(outputs, n_tokens) if n >= minimum]
        assert answers(prepared) == expected
        assert prepared.report["too_short"] == len(outputs) - len(expected)


def test_too_long_drops_or_counts_truncation(tmp_path, chat_tokenizer):
    rows = [{"instruction": "Copy this.", "input": sentence(i, 4 + 6 * i), "output": sentence(i + 50, 4)}
            for i in range(6)]
    path = write_jsonl(tmp_path / "l.jsonl", rows)
    lengths = []
    for r in rows:
        messages = [{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"},
                    {"role": "assistant", "content": r["output"]}]
        lengths.append(len(chat_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]))
    limit = sorted(lengths)[3]
    dropped = prepare(section(path, max_seq_len=limit), chat_tokenizer).report
    over = sum(n > limit for n in lengths)
    assert over > 0
    assert (dropped["too_long"], dropped["truncated"], dropped["kept"]) == (over, 0, 6 - over)
    assert dropped["lengths"]["example_tokens"]["max"] <= limit
    kept = prepare(section(path, max_seq_len=limit, truncate=True), chat_tokenizer).report
    assert (kept["too_long"], kept["truncated"], kept["kept"]) == (0, over, 6)
    assert sum(b["count"] for b in kept["lengths"]["histogram"]) == 6


def test_length_percentile_drops_outliers(tmp_path, chat_tokenizer):
    rows = [{"instruction": "Copy this.", "input": sentence(i, 10), "output": sentence(i + 50, 4)} for i in range(19)]
    rows.append({"instruction": "Copy this.", "input": sentence(99, 200), "output": sentence(98, 4)})
    prepared = prepare(section(write_jsonl(tmp_path / "p.jsonl", rows), max_length_percentile=95), chat_tokenizer)
    r = prepared.report
    assert r["too_long"] == 1 and r["lengths"]["percentile_limit"] < r["lengths"]["example_tokens"]["max"] * 10
    assert all(sentence(99, 200) not in row["prompt"][0]["content"] for row in prepared.train)


def test_scorer_hook_drops_rows_below_the_threshold(tmp_path, chat_tokenizer, monkeypatch):
    (tmp_path / "my_scorer.py").write_text(
        "def words_in_answer(rows):\n"
        "    return [len(r['completion'][-1]['content'].split()) for r in rows]\n"
        "def wrong_count(rows):\n"
        "    return [1.0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    outputs = ["one two", "one two three four five", "a b c d", "x y z w v u t"]
    path = write_jsonl(tmp_path / "r.jsonl", [{"instruction": f"Q{i}", "input": "", "output": o}
                                              for i, o in enumerate(outputs)])
    prepared = prepare(section(path, scorer={"callable": "my_scorer:words_in_answer", "threshold": 4.5,
                                             "batch_size": 3}), chat_tokenizer)
    assert answers(prepared) == ["one two three four five", "x y z w v u t"]
    assert prepared.report["low_score"] == 2
    assert prepared.report["scores"]["min"] == 2.0 and prepared.report["scores"]["max"] == 7.0
    with pytest.raises(DataError, match="returned 1 scores for 3 rows"):
        prepare(section(path, scorer={"callable": "my_scorer:wrong_count", "threshold": 0, "batch_size": 3}),
                chat_tokenizer)
    with pytest.raises(DataError, match="cannot import 'my_scorer:missing'"):
        prepare(section(path, scorer={"callable": "my_scorer:missing", "threshold": 0}), chat_tokenizer)


def test_task_balance_caps_the_largest_task(tmp_path, chat_tokenizer):
    rows = alpaca_rows(20)
    for i, r in enumerate(rows):
        r["task"] = "totals" if i < 12 else ("dates" if i < 16 else "names")
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    open_report = prepare(section(path), chat_tokenizer).report
    assert open_report["tasks"]["totals"]["share_after"] == pytest.approx(0.6)
    capped = prepare(section(path, max_task_share=0.5), chat_tokenizer)
    tasks = capped.report["tasks"]
    assert (tasks["totals"]["before"], tasks["totals"]["after"]) == (12, 8)
    assert (tasks["dates"]["after"], tasks["names"]["after"]) == (4, 4)
    assert capped.report["task_capped"] == 4 and len(capped.train) == 16
    again = prepare(section(path, max_task_share=0.5), chat_tokenizer)
    assert again.train.to_list() == capped.train.to_list()  # deterministic for a seed
    with pytest.raises(DataError, match="cannot hold with 3 task types"):
        prepare(section(path, max_task_share=0.3), chat_tokenizer)


def test_held_out_split_is_stable_when_rows_are_added(tmp_path, chat_tokenizer):
    small = prepare(section(write_jsonl(tmp_path / "a.jsonl", alpaca_rows(200)), val_set_size=0.2), chat_tokenizer)
    large = prepare(section(write_jsonl(tmp_path / "b.jsonl", alpaca_rows(100, start=200)[::-1] + alpaca_rows(200)),
                            val_set_size=0.2), chat_tokenizer)
    small_eval = {r["completion"][0]["content"] for r in small.eval}
    large_eval = {r["completion"][0]["content"] for r in large.eval}
    assert small_eval <= large_eval and 20 <= len(small_eval) <= 60
    assert not small_eval & {r["completion"][0]["content"] for r in small.train}
    assert small.report["train"] + small.report["eval"] == small.report["kept"] == 200


def test_general_data_is_mixed_into_training_at_the_ratio_by_seed(tmp_path, chat_tokenizer):
    task = write_jsonl(tmp_path / "task.jsonl", alpaca_rows(60))
    general_rows = [{"instruction": f"General question {i}?", "input": "", "output": f"General answer number {i}."}
                    for i in range(30)]
    general = write_jsonl(tmp_path / "general.jsonl", general_rows)
    data = section(task, val_set_size=0.1, mix={"source": str(general), "ratio": 0.1})
    prepared = prepare(data, chat_tokenizer, seed=1)
    r = prepared.report
    assert r["mixed"] == round(0.1 * (r["train"] - r["mixed"]) / 0.9) > 0
    mixed = [a for a in answers(prepared) if a.startswith("General answer")]
    assert len(mixed) == r["mixed"]
    assert not any(row["completion"][0]["content"].startswith("General") for row in prepared.eval)
    assert mixed == [a for a in answers(prepare(data, chat_tokenizer, seed=1)) if a.startswith("General")]
    assert mixed != [a for a in answers(prepare(data, chat_tokenizer, seed=2)) if a.startswith("General")]
    assert prepare(section(task), chat_tokenizer).report["mixed"] == 0  # the default ratio is 0


def test_diversity_is_lower_for_repetitive_data(tmp_path, chat_tokenizer):
    varied = prepare(section(write_jsonl(tmp_path / "v.jsonl", alpaca_rows(20))), chat_tokenizer)
    same = [{"instruction": f"Say it {i}.", "input": "", "output": "the same answer every time for all"}
            for i in range(20)]
    repetitive = prepare(section(write_jsonl(tmp_path / "r.jsonl", same), near_dup_threshold=None), chat_tokenizer)
    assert varied.report["diversity"]["distinct_2"] > 2 * repetitive.report["diversity"]["distinct_2"]


@pytest.mark.parametrize("settings, step", [
    ({"min_response_tokens": 1000, "short_relative": False}, "too_short"),
    ({"max_seq_len": 16}, "too_long"),
    ({"val_set_size": 0.999999}, "split"),
])
def test_an_empty_result_names_the_step(tmp_path, chat_tokenizer, settings, step):
    path = write_jsonl(tmp_path / "e.jsonl", alpaca_rows(5))
    with pytest.raises(DataError, match=f"no examples left after the {step} step"):
        prepare(section(path, **settings), chat_tokenizer)


def test_all_rows_near_duplicates_of_the_first_leaves_one(tmp_path, chat_tokenizer):
    base = sentence(4, 50)
    rows = [{"instruction": "Summarise.", "input": base + f" extra{i}", "output": "A short summary."} for i in range(4)]
    r = prepare(section(write_jsonl(tmp_path / "n.jsonl", rows)), chat_tokenizer).report
    assert (r["near_duplicates"], r["kept"]) == (3, 1)
    assert [s["step"] for s in r["steps"]][:3] == ["read", "exact_duplicates", "near_duplicates"]


def test_a_held_out_count_holds_out_exactly_that_many(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(96))
    first = prepare(section(path, val_set_size=16), chat_tokenizer)
    assert (len(first.train), len(first.eval)) == (80, 16)
    shuffled = prepare(section(write_jsonl(tmp_path / "b.jsonl", alpaca_rows(96)[::-1]), val_set_size=16),
                       chat_tokenizer)
    assert sorted(map(str, shuffled.eval.to_list())) == sorted(map(str, first.eval.to_list()))
    with pytest.raises(DataError, match="no examples left after the split step"):
        prepare(section(path, val_set_size=96), chat_tokenizer)


def test_short_answers_that_are_the_bulk_are_the_task(tmp_path, chat_tokenizer):
    """Labels, names and numbers: one-token answers that most rows have stay; the empty answer and a
    rare short one among long answers go, and the report shows the first removed of each rule."""
    labels = [{"instruction": f"Capital of country number {i} in the atlas?", "input": "", "output": c}
              for i, c in enumerate(["Paris", "Rome", "Oslo", "Bern", "Lima"] * 4)]
    labels.append({"instruction": "An empty one?", "input": "", "output": ""})
    prepared = prepare(section(write_jsonl(tmp_path / "l.jsonl", labels)), chat_tokenizer)
    assert prepared.report["too_short"] == 1 and prepared.report["kept"] == 20
    assert prepared.report["removed_examples"]["too_short"][0]["text"].endswith("An empty one?")
    assert "l.jsonl, line 21" in prepared.report["removed_examples"]["too_short"][0]["origin"]

    long = [{"instruction": f"Describe item {i}.", "input": "", "output": f"Item {i} is a steel lamp with a "
             f"brass switch and a cloth shade, number {i} of the catalogue."} for i in range(20)]
    long.append({"instruction": "And this?", "input": "", "output": "7"})
    outlier = prepare(section(write_jsonl(tmp_path / "o.jsonl", long), near_dup_threshold=None), chat_tokenizer)
    assert outlier.report["too_short"] == 1 and outlier.report["lengths"]["short_below"] == 2
