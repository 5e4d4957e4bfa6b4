"""The licence gate on real cards: lineage (`base_model`, several generations, and card text that names
another model's terms), licence files read by their clauses, conditions, and blocks that rest on a
licence's text. Front matter, card text and licence files are copied from the real repos into
tests/licence_cases/ (sources and licences in tests/licence_cases/SOURCES.md) and served by the loopback
Hub under the same repo ids; each test names the clause its answer rests on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_rows import tiny_run_config
from hub_server import readme
from huggingface_hub import snapshot_download

import hubtune
from hubtune import config as cfg
from hubtune import licence
from hubtune.cli import main
from hubtune.errors import LicenceBlocked, NamingRuleError

CASES = Path(__file__).parent / "licence_cases"
GATED = {"meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", "google/gemma-2-2b-it"}


@pytest.fixture
def cases(hub):
    """Every repo of tests/licence_cases on the loopback Hub (gated ones granted to alice); returns the
    commit sha of each."""
    shas = {}
    for kind in ("models", "datasets"):
        for folder in sorted(p for p in (CASES / kind).glob("*/*") if p.is_dir()):
            repo = f"{folder.parent.name}/{folder.name}"
            files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
            gated = "manual" if repo in GATED else False
            shas[repo] = hub.seed(repo, files, repo_type=kind[:-1], gated=gated)
            if gated:
                hub.grant(repo, "alice", kind[:-1])
    return shas


def check(capsys, model: str, *datasets: str, use: str, publish: bool = False) -> tuple[int, dict]:
    args = ["check", model, *[a for d in datasets for a in ("--dataset", d)], "--use", use, "--json"]
    code = main(args + (["--publish"] if publish else []))
    return code, json.loads(capsys.readouterr().out)


def repo_out(out: dict, repo: str) -> dict:
    return next(r for r in out["repos"] if r["repo"] == repo)


def rules(out: dict, repo: str) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for r in repo_out(out, repo)["rules"]:
        found.setdefault(r["rule"], []).append(r)
    return found


def gate(model: str, use: str, acknowledge: tuple[str, ...] = (), datasets=("hubtune:data/invoices/train.jsonl",)):
    return licence.gate_for_training(cfg.build({"model": {"id": model}, "data": {"sources": list(datasets)},
                                                "licence": {"use": use, "acknowledge": list(acknowledge)}}))


def train_config(tmp_path: Path, model: str, use: str, acknowledge: tuple[str, ...] = ()) -> Path:
    """A one-step run config on `model` for `hubtune train`: the licence gate runs before any weight."""
    config = tiny_run_config(tmp_path / "run.yaml", "hubtune:data/invoices/train.jsonl", output=tmp_path / "run")
    config.write_text(config.read_text().replace("id: hubtune:tiny-llama", f"id: {model}")
                      + f"licence:\n  use: {use}\n  acknowledge: {json.dumps(list(acknowledge))}\n")
    return config


# ---- 1. lineage ------------------------------------------------------------------------------------------
def test_distill_tagged_mit_is_bound_by_the_llama_licence_its_card_names(cases, capsys):
    """DeepSeek-R1-Distill-Llama-8B is tagged `mit`; its card: "is derived from Llama3.1-8B-Base and is
    originally licensed under llama3.1 license" -> Llama 3.1 §1.b.i: "Built with Llama" and the name prefix."""
    repo = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    code, out = check(capsys, repo, use="commercial")
    assert code == 0 and out["attributions"] == ["Built with Llama"]
    assert [(r["pattern"], r["clause"]) for r in out["name_rules"]] == [("^Llama", "Llama 3.1 §1.b.i")]
    chain = repo_out(out, repo)["lineage"]
    assert chain == [f"{repo} (mit) ← derived from (llama3.1), the card says: \"DeepSeek-R1-Distill-Llama-8B is "
                     f"derived from Llama3.1-8B-Base and is originally licensed under llama3.1 license.\""]
    # The sentences about the sibling Qwen and 70B distills of the shared card do not apply to this repo.
    assert not any("Qwen" in c or "llama3.3" in c for c in chain)
    assert any("Llama 3.1 Community License" in o and "[Llama 3.1 §1.b.i(A)]" in o for o in out["obligations"])
    with pytest.raises(NamingRuleError, match="must begin with \"Llama\""):
        licence.gate_for_publishing(licence.read_licence(repo), [], "commercial", [], "alice/R1-distill-invoices")


def test_push_of_the_distill_says_where_the_llama_agreement_it_must_carry_is(cases, hub_token, make_run):
    """No repo to copy the Llama 3.1 agreement from (the card names the licence, not a repo): the pushed
    card says the copy is due (§1.b.i(A)) and where the text is, beside the base's own MIT LICENSE."""
    repo = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    run = make_run(base_model=repo, base_revision=cases[repo], use="commercial")
    hubtune.push(run, "alice/Llama-R1-distill-invoices")
    body = (Path(snapshot_download("alice/Llama-R1-distill-invoices", token=False)) / "README.md").read_text()
    assert ("Its card says it derives from a model under the Llama 3.1 Community License (\"DeepSeek-R1-Distill-"
            "Llama-8B is derived from Llama3.1-8B-Base and is originally licensed under llama3.1 license.\"), whose "
            "licence requires a copy of itself with every derivative (Llama 3.1 §1.b.i(A)) and names no repo to copy "
            "it from: the text is at https://github.com/meta-llama/llama-models/blob/main/models/llama3_1/LICENSE"
            ) in body
    assert "**Built with Llama**" in body


def test_gemma_fine_tune_tagged_apache_carries_the_gemma_terms(cases, capsys):
    """An Unsloth-template card tags its Gemma fine-tune `apache-2.0`; its base_model is a 4-bit copy of
    google/gemma-2-2b-it: Gemma ToU §1.1(e) makes it a Model Derivative, §3.1 binds its distribution."""
    repo = "alice-ml/gemma-2-2b-it-invoices"
    code, out = check(capsys, repo, use="commercial", publish=True)
    found = repo_out(out, repo)
    assert found["lineage"] == [f"{repo} (apache-2.0) ← fine-tuned from unsloth/gemma-2-2b-it-bnb-4bit (gemma) "
                                f"← quantized from google/gemma-2-2b-it (gemma)"]
    assert [(a["repo"], a["relation"]) for a in found["ancestors"]] == [
        ("unsloth/gemma-2-2b-it-bnb-4bit", f"fine-tuned from {repo}"),
        ("google/gemma-2-2b-it", "quantized from unsloth/gemma-2-2b-it-bnb-4bit")]
    assert found["read_as"] == ["apache-2.0", "gemma", "gemma"]
    notice = [o for o in out["obligations"] if "Gemma is provided under and subject to the Gemma Terms of Use" in o]
    assert notice and notice[0].endswith("[Gemma ToU §3.1]")
    assert any("Gemma Prohibited Use Policy" in o for o in out["obligations"])


def test_nvidia_model_on_llama_carries_both_licences(cases, capsys):
    """Llama-3.1-Nemotron-Nano-8B-v1: NVIDIA Open Model License (its tag) on Llama-3.1-8B-Instruct (its
    base_model, itself fine-tuned from Llama-3.1-8B): NVIDIA OML §3 and Llama 3.1 §1.b.i stack."""
    repo = "nvidia/Llama-3.1-Nemotron-Nano-8B-v1"
    code, out = check(capsys, repo, use="commercial")
    assert code == 0
    lineage = repo_out(out, repo)["lineage"]
    assert (f"{repo} (other (nvidia-open-model-license)) ← fine-tuned from meta-llama/Llama-3.1-8B-Instruct "
            f"(llama3.1) ← fine-tuned from meta-llama/Llama-3.1-8B (llama3.1)") in lineage
    assert any("Licensed by NVIDIA Corporation under the NVIDIA Open Model License" in o for o in out["obligations"])
    assert out["attributions"] == ["Built with Llama"]
    assert any(r["clause"] == "Llama 3.1 §1.b.i" for r in out["name_rules"])
    table_code = main(["check", repo, "--use", "commercial"])
    table = capsys.readouterr().out
    assert table_code == 0 and "lineage (every ancestor's terms apply):" in table
    assert "← fine-tuned from meta-llama/Llama-3.1-8B-Instruct (llama3.1)" in table


def test_card_text_adds_the_terms_it_says_the_model_is_subject_to(cases, capsys):
    """Tülu 3 (llama3.1, three generations down from Llama-3.1-8B): "subject to additional terms: Gemma
    Terms of Use and Qwen License Agreement" -> Gemma ToU §3.1 and Qwen §3(c), §4 apply too."""
    repo = "allenai/Llama-3.1-Tulu-3-8B"
    code, out = check(capsys, repo, use="commercial")
    found = repo_out(out, repo)
    assert [a["repo"] for a in found["ancestors"]] == [
        "allenai/Llama-3.1-Tulu-3-8B-DPO", "allenai/Llama-3.1-Tulu-3-8B-SFT", "meta-llama/Llama-3.1-8B"]
    assert any(c.endswith("(gemma, qwen), the card says: \"The models have been fine-tuned using a dataset mix with "
                          "outputs generated from third party models and are subject to additional terms: Gemma Terms "
                          "of Use and Qwen License Agreement (models were improved using Qwen 2.5).\"")
               for c in found["lineage"])
    assert any("Gemma is provided under" in o for o in out["obligations"])
    assert any("Qwen LICENSE AGREEMENT" in o and "[Qwen §3(c)]" in o for o in out["obligations"])
    assert any("100 million monthly active users" in o for o in out["obligations"])
    assert set(out["attributions"]) == {"Built with Llama", "Built with Qwen"}


def _chain(hub, n: int, last: dict) -> str:
    for i in range(n):
        hub.seed(f"acme/gen-{i}", {"README.md": readme(license="mit", base_model=f"acme/gen-{i + 1}")})
    hub.seed(f"acme/gen-{n}", {"README.md": readme(**last)})
    return "acme/gen-0"


def test_merge_with_several_parents_applies_each_parent(hub):
    hub.seed("acme/merge-a", {"README.md": readme(license="apache-2.0")})
    hub.seed("acme/merge-b", {"README.md": readme(license="cc-by-nc-4.0")})
    hub.seed("acme/merged", {"README.md": readme(license="mit", base_model=["acme/merge-a", "acme/merge-b"])})
    verdict = licence.check("acme/merged", use="commercial")
    assert verdict.verdict == "block"
    assert verdict.findings[0].repo.chains() == ["acme/merged (mit) ← merged from acme/merge-a (apache-2.0)",
                                                 "acme/merged (mit) ← merged from acme/merge-b (cc-by-nc-4.0)"]
    assert any("acme/merge-b" in r and "CC BY-NC 4.0 §2(a)(1)" in r for r in verdict.reasons)


def test_cycle_and_depth_limit_end_the_walk(hub):
    hub.seed("acme/loop-a", {"README.md": readme(license="mit", base_model="acme/loop-b")})
    hub.seed("acme/loop-b", {"README.md": readme(license="llama3.1", base_model="acme/loop-a")})
    looped = licence.check("acme/loop-a", use="commercial")
    assert looped.findings[0].repo.chains() == ["acme/loop-a (mit) ← fine-tuned from acme/loop-b (llama3.1)"]
    assert looped.attributions == ["Built with Llama"]

    deep = licence.check(_chain(hub, licence.MAX_DEPTH + 2, {"license": "cc-by-nc-4.0"}), use="commercial")
    assert "deeper than 8 generations" in deep.findings[0].repo.chains()[0]
    assert any(h.rule == "lineage-unread" for h in deep.findings[0].hits)
    assert [f.repo.ref for f in deep.unacknowledged()] == ["acme/gen-0"]


def test_ancestors_are_read_at_the_commits_a_run_recorded(hub):
    first = hub.seed("acme/relicensed-base", {"README.md": readme(license="cc-by-nc-4.0")})
    hub.seed("acme/relicensed-base", {"README.md": readme(license="apache-2.0")})
    hub.seed("acme/child", {"README.md": readme(license="mit", base_model="acme/relicensed-base")})
    now = licence.read_licence("acme/child")
    assert now.parents[0].parent.licences == ["apache-2.0"]
    pinned = licence.read_licence("acme/child", pins={"acme/relicensed-base": first})
    assert pinned.parents[0].parent.licences == ["cc-by-nc-4.0"] and pinned.parents[0].parent.revision_sha == first
    assert licence.licence_verdict(pinned, [], "commercial").verdict == "block"


def test_an_ancestor_that_cannot_be_read_needs_acknowledgement(hub):
    hub.seed("acme/orphan", {"README.md": readme(license="apache-2.0", base_model="acme/deleted-base")})
    verdict = licence.check("acme/orphan", use="research")
    assert verdict.verdict == "warn" and "acme/deleted-base" in verdict.reasons[0]
    assert [f.repo.ref for f in verdict.unacknowledged()] == ["acme/orphan"]
    assert not verdict.unacknowledged(["acme/orphan"])


# ---- 2. licence files ------------------------------------------------------------------------------------
def test_licence_file_decides_when_the_tag_is_missing(cases, capsys):
    """DeepSeek-V3-Base has no `license:`; LICENSE-MODEL is the DeepSeek License Agreement (recognised by
    its clauses), whose §4(a) makes its use restrictions an enforceable provision of every derivative."""
    repo = "deepseek-ai/DeepSeek-V3-Base"
    code, out = check(capsys, repo, use="commercial")
    found = repo_out(out, repo)
    assert code == 0 and not found["needs_acknowledgement"]
    assert {(r["licence"], r["file"]) for r in found["read_from_text"]} == {("deepseek", "LICENSE-MODEL"),
                                                                            ("mit", "LICENSE-CODE")}
    passing_on = [o for o in out["obligations"] if "as an enforceable provision" in o]
    assert passing_on and passing_on[0].endswith("[DeepSeek License §4(a), §5]")


def test_licence_is_recognised_by_its_clauses_not_its_file_name(hub):
    text = (CASES / "models/deepseek-ai/DeepSeek-V3-Base/LICENSE-MODEL").read_text()
    hub.seed("acme/renamed", {"README.md": readme(), "COPYING.txt": text})
    assert licence.read_licence("acme/renamed").text_licences == [("deepseek", "COPYING.txt")]
    hub.seed("acme/misnamed", {"README.md": readme(), "LICENSE-LLAMA": "All rights reserved.\n"})
    misnamed = licence.check("acme/misnamed", use="personal")
    assert misnamed.findings[0].repo.text_licences == [] and misnamed.findings[0].needs_acknowledgement
    # A use policy lists forbidden acts and a NOTICE names licences: neither is read for decisive clauses.
    hub.seed("acme/policied", {"README.md": readme(license="apache-2.0"),
                               "USE_POLICY.md": "Do not use it for research only purposes of harm.\n",
                               "NOTICE": "Parts are licensed for non-commercial use elsewhere.\n"})
    assert licence.check("acme/policied", use="commercial").verdict == "allow"


def test_license_link_inside_the_repo_is_read_at_the_pinned_revision(hub):
    old = hub.seed("acme/linked", {"README.md": readme(license="other", license_link="docs/terms.md"),
                                   "docs/terms.md": "Licensed for non-commercial research use only.\n"})
    hub.seed("acme/linked", {"docs/terms.md": "Apache License, Version 2.0, January 2004 ..."})
    pinned = licence.check("acme/linked", use="commercial", revision=old)
    assert pinned.verdict == "block" and pinned.findings[0].hard_block
    assert pinned.findings[0].repo.files == ["docs/terms.md"]


def test_unknown_text_with_a_non_commercial_clause_blocks_commercial_use_for_good(cases, capsys):
    """EXAONEPath's licence is not one hubtune knows; its §3.1 ("expressly prohibited from using the
    Model, Derivatives, or Output for any commercial purposes") and §2.1(a) ("solely for research
    purposes") still decide: commercial and personal use are blocked, and acknowledging does not lift it."""
    repo = "LGAI-EXAONE/EXAONEPath"
    code, out = check(capsys, repo, use="commercial")
    assert code == 3
    clauses = {(c["file"], c["kind"]): c["quote"] for c in repo_out(out, repo)["clauses"]}
    assert ("LICENSE", "non-commercial") in clauses
    assert "solely for research purposes" in clauses["LICENSE", "research-only"]
    with pytest.raises(LicenceBlocked, match="nor one its text or card forbids"):
        gate(repo, "commercial", acknowledge=(repo,))
    with pytest.raises(LicenceBlocked, match="not one hubtune knows"):
        gate(repo, "research")
    assert gate(repo, "research", acknowledge=(repo,)).verdict == "warn"


def test_tag_and_card_text_that_disagree_need_a_human(cases, capsys):
    """A dataset tagged cc-by-sa-4.0 whose card says "licensed under CC BY-NC-SA 4.0": both apply (CC
    BY-NC-SA 4.0 §2(a)(1) blocks commercial use for good), and which one governs needs a human."""
    data = "acme/support-dialogues"
    code, out = check(capsys, "hubtune:tiny-llama", data, use="commercial")
    found = rules(out, data)
    assert code == 3 and "tag-card-mismatch" in found
    assert any(r["clause"] == "CC BY-NC-SA 4.0 §2(a)(1)" for r in found["use-not-permitted"])
    with pytest.raises(LicenceBlocked):
        gate("hubtune:tiny-llama", "commercial", acknowledge=(data,), datasets=(data,))
    with pytest.raises(LicenceBlocked, match="which governs needs a human"):
        gate("hubtune:tiny-llama", "research", datasets=(data,))
    assert gate("hubtune:tiny-llama", "research", acknowledge=(data,), datasets=(data,))


# ---- 3. conditions and text-based blocks ----------------------------------------------------------------
def test_stability_community_licence_is_allowed_once_registered_and_under_the_revenue_cap(cases, capsys, cli,
                                                                                         tmp_path):
    """StableLM 2 (`license: other`, LICENSE.md = Stability AI Community License): §III registration for
    commercial use and the USD 1M revenue ceiling are conditions; §IV(a)(iii) "Powered by Stability AI"."""
    repo = "stabilityai/stablelm-2-1_6b"
    code, out = check(capsys, repo, use="commercial")
    assert code == 0 and out["verdict"] == "conditional"
    assert [c.split(" [")[-1] for c in out["conditions"]] == ["Stability AI Community §III]"] * 2
    assert any("https://stability.ai/community-license" in c for c in out["conditions"])
    assert any("USD 1,000,000" in c for c in out["conditions"])
    assert out["attributions"] == ["Powered by Stability AI"]
    result = cli("train", train_config(tmp_path, repo, "commercial"))
    assert result.returncode == 3 and "allowed once you confirm" in result.stderr
    assert "licence.acknowledge=['stabilityai/stablelm-2-1_6b']" in result.stderr
    assert gate(repo, "commercial", acknowledge=(repo,)).verdict == "conditional"


def test_glm4_needs_registration_for_commercial_use(cases, capsys):
    """glm-4 License §2: free for academic research; commercial use after registration; "Built with glm-4";
    a derivative's name begins with "glm-4"."""
    repo = "THUDM/glm-4-9b"
    code, out = check(capsys, repo, use="research")
    assert code == 0 and out["verdict"] == "allow" and out["attributions"] == ["Built with glm-4"]
    code, out = check(capsys, repo, use="commercial")
    assert out["verdict"] == "conditional"
    assert out["conditions"] == ["Complete the registration at https://open.bigmodel.cn/mla/form before any "
                                 "commercial use of THUDM/glm-4-9b. [glm-4 License §2]"]
    with pytest.raises(NamingRuleError, match='begin with "glm-4"'):
        licence.gate_for_publishing(licence.read_licence(repo), [], "research", [], "alice/invoices-9b")
    licence.gate_for_publishing(licence.read_licence(repo), [], "research", [], "alice/glm-4-9b-invoices")


def test_internlm_commercial_use_needs_its_application(cases, capsys):
    repo = "internlm/internlm2-chat-7b"
    code, out = check(capsys, repo, use="commercial")
    assert out["verdict"] == "conditional" and not repo_out(out, repo)["needs_acknowledgement"]
    assert out["conditions"][0].endswith("[InternLM card: License section]")
    assert "https://wj.qq.com/s2/12727483/5dba/" in out["conditions"][0]


def test_exaone_non_commercial_text_cannot_be_acknowledged_into_commercial_use(cases, capsys, cli, tmp_path):
    """EXAONE 3.5: `license_name: exaone` and a LICENSE that is the EXAONE AI Model License Agreement
    1.1 - NC, §3.1: commercial use expressly prohibited. Before, an acknowledgement let it through."""
    repo = "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct"
    code, out = check(capsys, repo, use="commercial")
    assert code == 3
    blocked = rules(out, repo)["use-not-permitted"]
    # Read as the version its LICENSE names, not twice (tag and text are the same licence).
    assert [r["clause"] for r in blocked] == ["EXAONE 1.1-NC §2.1(a), §3.1"]
    result = cli("train", train_config(tmp_path, repo, "commercial", acknowledge=(repo,)))
    assert result.returncode == 3 and "nor one its text or card forbids" in result.stderr
    assert gate(repo, "research").verdict == "allow"


def test_command_r_card_text_makes_its_non_commercial_block_final(cases, capsys):
    """Command R: `cc-by-nc-4.0`, and the card says "CC-BY-NC ..., requires also adhering to C4AI's
    Acceptable Use Policy": the NC block rests on the text; the policy is passed on."""
    repo = "CohereForAI/c4ai-command-r-v01"
    code, out = check(capsys, repo, use="commercial")
    assert code == 3
    with pytest.raises(LicenceBlocked):
        gate(repo, "commercial", acknowledge=(repo,))
    research = gate(repo, "research")
    assert any("C4AI's Acceptable Use Policy" in o and o.endswith("[C4AI CC-BY-NC acceptable use addendum]")
               for o in research.obligations)


@pytest.mark.slow
def test_training_on_a_derived_base_records_its_lineage_and_obligations(cases, hub, cli, tmp_path, tiny_base_files):
    """`hubtune train` on the NVIDIA model (the tiny test weights under its real card): the gate passes for
    commercial use, and the run record keeps the chain and both licences' obligations."""
    repo = "nvidia/Llama-3.1-Nemotron-Nano-8B-v1"
    hub.seed(repo, tiny_base_files)
    result = cli("train", train_config(tmp_path, repo, "commercial"))
    assert result.returncode == 0, result.stderr
    recorded = json.loads((tmp_path / "run" / "summary.json").read_text())["licence"]
    assert recorded["repos"][0]["lineage"][0].endswith("← fine-tuned from meta-llama/Llama-3.1-8B (llama3.1)")
    assert "Built with Llama" in recorded["attributions"]
    assert any("NVIDIA Open Model License" in o for o in recorded["obligations"])


# ---- 5. the card and the pushed repo ---------------------------------------------------------------------
def test_push_carries_the_chain_every_ancestors_obligations_and_their_licence_files(cases, hub_token, make_run):
    repo = "nvidia/Llama-3.1-Nemotron-Nano-8B-v1"
    run = make_run(base_model=repo, base_revision=cases[repo], use="commercial")
    with pytest.raises(NamingRuleError, match="Llama 3.1 §1.b.i"):
        hubtune.push(run, "alice/nemotron-invoices")
    result = hubtune.push(run, "alice/Llama-3.1-Nemotron-invoices")
    assert {"licences/meta-llama--Llama-3.1-8B-Instruct/LICENSE",
            "licences/meta-llama--Llama-3.1-8B/LICENSE"} <= set(result.files)
    pulled = Path(snapshot_download("alice/Llama-3.1-Nemotron-invoices", token=False))
    assert (pulled / "licences/meta-llama--Llama-3.1-8B/LICENSE").read_bytes() == \
        (CASES / "models/meta-llama/Llama-3.1-8B/LICENSE").read_bytes()
    body = (pulled / "README.md").read_text()
    assert (f"It also carries the licence files of the ancestor `meta-llama/Llama-3.1-8B` (at "
            f"`{cases['meta-llama/Llama-3.1-8B'][:12]}`): `licences/meta-llama--Llama-3.1-8B/LICENSE`, as its "
            f"licence requires (Llama 3.1 §1.b.i(A)).") in body
    assert "- nvidia/Llama-3.1-Nemotron-Nano-8B-v1 (other (nvidia-open-model-license)) ← fine-tuned from " in body
    assert "Licensed by NVIDIA Corporation under the NVIDIA Open Model License" in body
    assert "**Built with Llama**" in body


def test_push_of_a_conditional_base_lists_the_conditions_it_was_confirmed_under(cases, hub_token, make_run):
    repo = "THUDM/glm-4-9b"
    run = make_run(base_model=repo, base_revision=cases[repo], use="commercial")
    with pytest.raises(LicenceBlocked, match="registration at https://open.bigmodel.cn/mla/form"):
        hubtune.push(run, "alice/glm-4-9b-invoices")
    result = hubtune.push(run, "alice/glm-4-9b-invoices", acknowledge=[repo])
    assert "LICENSE" in result.files  # glm-4 License §2(A): a copy with the derivative
    body = Path(snapshot_download("alice/glm-4-9b-invoices", token=False), "README.md").read_text()
    assert "Allowed once you have done this (the publisher confirmed it):" in body
    assert "open.bigmodel.cn/mla/form before any commercial use of THUDM/glm-4-9b. [glm-4 License §2]" in body
    assert "**Built with glm-4**" in body
