"""The licence table: every licence cites the clause of each rule, and the docs' table is the
data's own rendering, so it cannot drift from what the gate applies."""

from __future__ import annotations

import re

from readme_blocks import DOCS

from hubtune.licence_terms import ALL, LICENCES, TABLE_END, TABLE_START, licence_table, with_licence_table


def test_every_rule_of_every_licence_cites_its_clause():
    for t in LICENCES.values():
        assert t.uses == ALL or t.uses_clause, t.id
        assert t.derivatives or t.derivatives_clause, t.id
        assert not t.attribution or t.attribution_clause, t.id
        assert not t.use_policy or t.use_policy_clause, t.id
        assert not t.improve_only or t.improve_clause, t.id
        assert not t.cap or t.cap.clause, t.id
        assert not t.name_rule or t.name_rule.clause, t.id
        assert all(d.clause and d.label and d.text for d in t.duties), t.id
        assert t.share_alike is None or t.share_alike.strip(), t.id


def test_docs_table_matches_the_licence_data():
    text = (DOCS / "hub.md").read_text()
    assert text == with_licence_table(text), (
        "docs/hub.md's licence table is out of date: run `python -m hubtune.licence_terms docs/hub.md`")
    table = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    assert licence_table() in table
    shown = re.findall(r"^\| `([^`]+)` \|", table, flags=re.M)
    assert shown == sorted(LICENCES)  # every licence known, once
