"""What a pushed repo carries: the base repo's LICENSE*, USE_POLICY* and NOTICE* files at the pinned
revision (adapter and merged alike), or, where the base has none, a card that links the text and
says so. End to end against the loopback Hub, with the real client."""

from __future__ import annotations

import pytest

from pathlib import Path

from hub_server import readme
from huggingface_hub import ModelCard, snapshot_download

import hubtune
from hubtune.cli import main

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

LICENSE = "LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\nLlama 3.1 Version Release Date: July 23, 2024\n(test copy)\n"
USE_POLICY = "# Llama 3.1 Acceptable Use Policy\n(test copy)\n"
NOTICE = "Llama 3.1 is licensed under the Llama 3.1 Community License, Copyright © Meta Platforms, Inc.\n"


def seed_llama_base(hub, repo: str, extra: dict | None = None) -> str:
    """A gated Llama 3.1 base carrying its licence agreement, use policy and Notice, then a later
    commit that changes the licence file: a push must copy the one at the pinned revision."""
    sha = hub.seed(repo, {"README.md": readme(license="llama3.1"), "LICENSE": LICENSE, "USE_POLICY.md": USE_POLICY,
                          "NOTICE.txt": NOTICE, "original/LICENSE": "a duplicate in a subfolder",
                          **(extra or {})}, gated="manual")
    hub.seed(repo, {"LICENSE": "a later licence text"}, gated="manual")
    hub.grant(repo, "alice")
    return sha


def test_pushed_llama_adapter_holds_the_licence_agreement(hub, hub_token, make_run, capsys):
    sha = seed_llama_base(hub, "meta-llama/Llama-3.1-8B-lic")
    run = make_run(base_model="meta-llama/Llama-3.1-8B-lic", base_revision=sha, use="research")
    assert main(["push", str(run), "--repo", "alice/Llama-3.1-8B-lic-invoices"]) == 0
    assert "alice/Llama-3.1-8B-lic-invoices" in capsys.readouterr().out

    pulled = Path(snapshot_download("alice/Llama-3.1-8B-lic-invoices", token=False))
    assert (pulled / "LICENSE").read_text() == LICENSE  # the agreement at the pinned revision, byte for byte
    assert (pulled / "USE_POLICY.md").read_text() == USE_POLICY
    assert (pulled / "NOTICE.txt").read_text() == NOTICE
    assert not (pulled / "original").exists()
    body = ModelCard.load(pulled / "README.md").text
    assert (f"This repo carries the base's own `LICENSE`, `NOTICE.txt`, `USE_POLICY.md`, copied from "
            f"`meta-llama/Llama-3.1-8B-lic` at `{sha[:12]}`, as its licence requires (Llama 3.1 §1.b.i(A))") in body


def test_merged_push_holds_the_licence_agreement_too(hub, hub_token, tiny_base_files, make_run):
    sha = seed_llama_base(hub, "meta-llama/Llama-3.1-tiny-lic", tiny_base_files)
    run = make_run(base_model="meta-llama/Llama-3.1-tiny-lic", base_revision=sha, use="research")
    result = hubtune.push(run, "alice/Llama-3.1-tiny-lic-merged", merged=True)
    assert {"model.safetensors", "LICENSE", "USE_POLICY.md", "NOTICE.txt"} <= set(result.files)
    assert hub.files("alice/Llama-3.1-tiny-lic-merged")["LICENSE"].decode() == LICENSE


def test_base_without_licence_files_gets_a_card_that_links_the_text_and_says_so(hub, hub_token, make_run):
    sha = hub.seed("meta-llama/Llama-3.1-nofiles", {"README.md": readme(license="llama3.1")})
    run = make_run(base_model="meta-llama/Llama-3.1-nofiles", base_revision=sha, use="research")
    result = hubtune.push(run, "alice/Llama-3.1-nofiles-invoices")
    assert not any(f.upper().startswith(("LICENSE", "USE_POLICY", "NOTICE")) for f in result.files)
    body = hub.files("alice/Llama-3.1-nofiles-invoices")["README.md"].decode()
    assert ("Its licence requires a copy of itself with every derivative (Llama 3.1 §1.b.i(A)), but "
            f"`meta-llama/Llama-3.1-nofiles` holds no LICENSE file at `{sha[:12]}`: the text is at "
            "https://github.com/meta-llama/llama-models/blob/main/models/llama3_1/LICENSE") in body


def test_apache_4a_base_licence_file_is_carried(hub, hub_token, make_run):
    sha = hub.seed("acme/apache-base", {"README.md": readme(license="apache-2.0"), "LICENSE": "Apache License 2.0\n"})
    run = make_run(base_model="acme/apache-base", base_revision=sha)
    hubtune.push(run, "alice/apache-adapter")
    files = hub.files("alice/apache-adapter")
    assert files["LICENSE"] == b"Apache License 2.0\n"
    assert (f"This repo carries the base's own `LICENSE`, copied from `acme/apache-base` at `{sha[:12]}`, as its "
            f"licence requires (Apache-2.0 §4(a))") in files["README.md"].decode()
