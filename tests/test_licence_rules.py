"""One test per licence rule, named for the clause it comes from, through the real CLI
(`hubtune check ... --json`) against the loopback Hub with cards carrying the licence metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import HUB_TOKEN
from hub_server import readme

from hubtune import config as cfg
from hubtune import licence
from hubtune.cli import main
from hubtune.errors import LicenceBlocked, NamingRuleError

QWEN_NOTICE = "Qwen is licensed under the Qwen LICENSE AGREEMENT, Copyright (c) Alibaba Cloud. All Rights Reserved."
TONGYI_NOTICE = ("Tongyi Qianwen is licensed under the Tongyi Qianwen LICENSE AGREEMENT, Copyright (c) Alibaba Cloud. "
                 "All Rights Reserved.")


def seed(hub, repo: str, repo_type: str = "model", gated: str | bool = False, **meta) -> str:
    return hub.seed(repo, {"README.md": readme(**meta)}, repo_type=repo_type, gated=gated)


def check(capsys, model: str, *datasets: str, use: str = "personal", publish: bool = False) -> tuple[int, dict]:
    """`hubtune check MODEL --dataset ... --use USE [--publish] --json`: (exit code, the JSON it printed)."""
    args = ["check", model, *[a for d in datasets for a in ("--dataset", d)], "--use", use, "--json"]
    code = main(args + (["--publish"] if publish else []))
    return code, json.loads(capsys.readouterr().out)


def rules(out: dict, repo: str) -> dict[str, dict]:
    """The rules that fired on one repo, by rule name."""
    found = next(r for r in out["repos"] if r["repo"] == repo)
    return {r["rule"]: r for r in found["rules"]}


# ---- outputs used to improve other models ---------------------------------------------------------
@pytest.mark.parametrize("use", ["personal", "research", "commercial"])
def test_llama2_1b_v_outputs_may_not_improve_other_models(hub, capsys, use):
    seed(hub, "acme/mistral-base", license="apache-2.0")
    seed(hub, "acme/llama2-distilled", "dataset", license="llama2")
    code, out = check(capsys, "acme/mistral-base", "acme/llama2-distilled", use=use)
    assert code == 3 and out["verdict"] == "block"  # whatever the use
    hit = rules(out, "acme/llama2-distilled")["outputs-improve-other-models"]
    assert hit["verdict"] == "block" and hit["clause"] == "Llama 2 §1.b.v"
    assert "[Llama 2 §1.b.v]" in hit["reason"] and "acme/mistral-base" in hit["reason"]

    seed(hub, "meta-llama/Llama-2-7b-hf", license="llama2")
    code, out = check(capsys, "meta-llama/Llama-2-7b-hf", "acme/llama2-distilled", use=use)
    assert code == 0 and "outputs-improve-other-models" not in rules(out, "acme/llama2-distilled")


def test_llama3_1b_v_outputs_may_not_improve_other_models(hub, capsys):
    seed(hub, "acme/qwen-apache", license="apache-2.0")
    seed(hub, "meta-llama/Meta-Llama-3-8B", license="llama3")
    seed(hub, "acme/llama3-distilled", "dataset", license="llama3")
    code, out = check(capsys, "acme/qwen-apache", "acme/llama3-distilled", use="research")
    assert code == 3
    assert rules(out, "acme/llama3-distilled")["outputs-improve-other-models"]["clause"] == "Meta Llama 3 §1.b.v"
    code, out = check(capsys, "meta-llama/Meta-Llama-3-8B", "acme/llama3-distilled", use="research")
    assert code == 0 and out["verdict"] == "allow"


def test_tongyi_qianwen_5b_outputs_may_not_improve_other_models(hub, capsys):
    seed(hub, "meta-llama/Llama-3.1-8B", license="llama3.1")
    seed(hub, "Qwen/Qwen-7B", license="other", license_name="tongyi-qianwen")
    seed(hub, "acme/qwen1-distilled", "dataset", license="other", license_name="tongyi-qianwen")
    code, out = check(capsys, "meta-llama/Llama-3.1-8B", "acme/qwen1-distilled", use="commercial")
    assert code == 3
    assert rules(out, "acme/qwen1-distilled")["outputs-improve-other-models"]["clause"] == "Tongyi Qianwen §5(b)"
    code, out = check(capsys, "Qwen/Qwen-7B", "acme/qwen1-distilled", use="commercial")
    assert code == 0 and "outputs-improve-other-models" not in rules(out, "acme/qwen1-distilled")


def test_tongyi_qianwen_research_4b_outputs_may_not_improve_other_models(hub, capsys):
    seed(hub, "acme/base-mit", license="mit")
    seed(hub, "acme/qwen1-research-distilled", "dataset", license="other", license_name="tongyi-qianwen-research")
    code, out = check(capsys, "acme/base-mit", "acme/qwen1-research-distilled", use="research")
    hit = rules(out, "acme/qwen1-research-distilled")["outputs-improve-other-models"]
    assert code == 3 and hit["clause"] == "Tongyi Qianwen Research §4(b)"


def test_an_acknowledgement_lets_an_outputs_block_through_when_the_base_is_a_derivative(hub):
    seed(hub, "acme/llama2-finetune-untagged", license="apache-2.0")
    seed(hub, "acme/llama2-chats", "dataset", license="llama2")
    def config(*acknowledge):
        return cfg.build({"model": {"id": "acme/llama2-finetune-untagged"}, "data": {"sources": ["acme/llama2-chats"]},
                          "licence": {"use": "research", "acknowledge": list(acknowledge)}})

    with pytest.raises(LicenceBlocked, match=r"(?s)§1\.b\.v.*licence.acknowledge=\['acme/llama2-chats'\]"):
        licence.gate_for_training(config())
    assert licence.gate_for_training(config("acme/llama2-chats")).verdict == "block"  # recorded as it is


# ---- Llama 3.1 and later, through data -------------------------------------------------------------
def test_llama3_1_1b_i_name_rule_and_built_with_llama_bind_a_model_trained_on_outputs(hub, capsys):
    seed(hub, "acme/base-apache", license="apache-2.0")
    seed(hub, "acme/llama31-outputs", "dataset", license="llama3.1")
    code, out = check(capsys, "acme/base-apache", "acme/llama31-outputs", use="research", publish=True)
    assert code == 0
    assert out["name_rules"] == [{"repo": "acme/llama31-outputs", "pattern": "^Llama",
                                  "rule": 'its name must begin with "Llama"', "clause": "Llama 3.1 §1.b.i"}]
    assert out["attributions"] == ["Built with Llama"]
    assert any(o.startswith('Display "Built with Llama"') and o.endswith("[Llama 3.1 §1.b.i(B)]")
               for o in out["obligations"])

    verdict = licence.check("acme/base-apache", ["acme/llama31-outputs"], use="research", publish=True)
    with pytest.raises(NamingRuleError, match=r'must begin with "Llama" \[Llama 3\.1 §1\.b\.i\]'):
        licence.gate_for_publishing(verdict.findings[0].repo, [verdict.findings[1].repo], "research", [],
                                    "alice/invoices-8B")
    licence.gate_for_publishing(verdict.findings[0].repo, [verdict.findings[1].repo], "research", [],
                                "alice/Llama-invoices-8B")


def test_llama3_1b_i_name_rule_binds_the_base_only(hub, capsys):
    seed(hub, "meta-llama/Meta-Llama-3-8B-Instruct", license="llama3")
    seed(hub, "acme/llama3-answers", "dataset", license="llama3")
    code, out = check(capsys, "meta-llama/Meta-Llama-3-8B-Instruct", "acme/llama3-answers", use="research",
                      publish=True)
    assert code == 0 and [r["repo"] for r in out["name_rules"]] == ["meta-llama/Meta-Llama-3-8B-Instruct"]


def test_push_refuses_a_name_that_breaks_the_llama3_1_rule_through_data(hub, hub_token, make_run, capsys):
    seed(hub, "acme/base-for-push", license="apache-2.0")
    seed(hub, "acme/llama31-answers", "dataset", license="llama3.1")
    run = make_run(base_model="acme/base-for-push", datasets=("acme/llama31-answers",), use="research")
    assert main(["push", str(run), "--repo", "alice/invoices"]) == 3
    err = capsys.readouterr().err
    assert "acme/llama31-answers" in err and "[Llama 3.1 §1.b.i]" in err and "alice/Llama-invoices" in err
    assert ("model", "alice/invoices") not in hub.repos


# ---- caps and regions ----------------------------------------------------------------------------
@pytest.mark.parametrize("lic", ["llama2", "llama3.1", "llama4"])
def test_llama_2_no_rights_at_all_above_700m_monthly_users_for_every_use(hub, capsys, lic):
    seed(hub, f"meta-llama/cap-{lic}", license=lic)
    code, out = check(capsys, f"meta-llama/cap-{lic}", use="personal")
    capped = [o for o in out["obligations"] if "700 million monthly active users" in o]
    assert len(capped) == 1 and capped[0].startswith("No rights at all") and "not only commercial" in capped[0]
    assert capped[0].endswith("§2]")


def test_qwen_4_cap_binds_commercial_use_only(hub, capsys):
    seed(hub, "Qwen/Qwen2.5-72B-Instruct", license="other", license_name="qwen")
    _, personal = check(capsys, "Qwen/Qwen2.5-72B-Instruct", use="personal")
    assert not any("100 million" in o for o in personal["obligations"])
    _, commercial = check(capsys, "Qwen/Qwen2.5-72B-Instruct", use="commercial")
    assert [o for o in commercial["obligations"] if "100 million" in o][0].endswith("[Qwen §4]")


def test_llama3_2_eu_clause_covers_multimodal_models_only(hub, capsys):
    seed(hub, "meta-llama/Llama-3.2-1B", license="llama3.2", pipeline_tag="text-generation")
    seed(hub, "meta-llama/Llama-3.2-11B-Vision", license="llama3.2", pipeline_tag="image-text-to-text")
    code, text = check(capsys, "meta-llama/Llama-3.2-1B", use="commercial")
    assert code == 0 and text["verdict"] == "allow"
    assert "eu-multimodal" not in rules(text, "meta-llama/Llama-3.2-1B")
    code, vision = check(capsys, "meta-llama/Llama-3.2-11B-Vision", use="commercial")
    hit = rules(vision, "meta-llama/Llama-3.2-11B-Vision")["eu-multimodal"]
    assert code == 0 and vision["verdict"] == "warn"
    assert hit["clause"] == "Llama 3.2 Acceptable Use Policy (EU clause)"
    assert "the EU" in hit["reason"] and "end users" in hit["reason"]


def test_llama4_acceptable_use_policy_eu_clause_warns_for_its_multimodal_models(hub, capsys):
    seed(hub, "meta-llama/Llama-4-Scout-17B-16E", license="llama4")
    code, out = check(capsys, "meta-llama/Llama-4-Scout-17B-16E", use="research")
    assert code == 0 and out["verdict"] == "warn"
    assert rules(out, "meta-llama/Llama-4-Scout-17B-16E")["eu-multimodal"]["clause"] == (
        "Llama 4 Acceptable Use Policy (EU clause)")


def test_the_hub_gate_extra_gated_eu_disallowed_warns(hub, capsys):
    seed(hub, "acme/eu-gated", gated="auto", license="apache-2.0", extra_gated_eu_disallowed=True)
    code, out = check(capsys, "acme/eu-gated")
    hit = rules(out, "acme/eu-gated")["eu-gate"]
    assert code == 0 and out["verdict"] == "warn" and hit["clause"] == "Hub gate: extra_gated_eu_disallowed"


# ---- Qwen ---------------------------------------------------------------------------------------
def test_qwen_research_1i_personal_use_is_not_research(hub, capsys):
    seed(hub, "Qwen/Qwen2.5-3B-Instruct", license="other", license_name="qwen-research")
    code, out = check(capsys, "Qwen/Qwen2.5-3B-Instruct", use="personal")
    hit = rules(out, "Qwen/Qwen2.5-3B-Instruct")["use-not-permitted"]
    assert code == 3 and hit["clause"] == "Qwen Research §1(i), §2(a)" and "personal use" in hit["reason"]
    code, out = check(capsys, "Qwen/Qwen2.5-3B-Instruct", use="research")
    assert code == 0 and any(o.startswith("Research only") for o in out["obligations"])
    acknowledged = cfg.build({"model": {"id": "Qwen/Qwen2.5-3B-Instruct"}, "licence": {
        "use": "personal", "acknowledge": ["Qwen/Qwen2.5-3B-Instruct"]}})
    # A known licence: the acknowledgement (a separate licence held) lets the block through, recorded as it is.
    assert licence.gate_for_training(acknowledged).verdict == "block"


def test_tongyi_qianwen_is_its_own_licence_3c_notice_no_built_with_qwen(hub, capsys):
    seed(hub, "Qwen/Qwen1.5-7B", license="other", license_name="tongyi-qianwen")
    code, out = check(capsys, "Qwen/Qwen1.5-7B", use="commercial", publish=True)
    repo = out["repos"][0]
    assert code == 0 and repo["read_as"] == ["tongyi-qianwen"]
    assert f'Carry in a "Notice" text file: "{TONGYI_NOTICE}" [Tongyi Qianwen §3(c)]' in out["obligations"]
    assert out["attributions"] == [] and not any("Built with Qwen" in o for o in out["obligations"])
    assert any("100 million" in o and o.endswith("[Tongyi Qianwen §4]") for o in out["obligations"])


def test_qwen_3c_notice_verbatim_and_5b_built_with_qwen_through_data(hub, capsys):
    seed(hub, "Qwen/Qwen2.5-72B-Instruct-b", license="other", license_name="qwen")
    seed(hub, "acme/qwen-answers", "dataset", license="other", license_name="qwen")
    seed(hub, "acme/base-bsd", license="bsd-3-clause")
    _, out = check(capsys, "Qwen/Qwen2.5-72B-Instruct-b", use="commercial", publish=True)
    assert f'Carry in a "Notice" text file: "{QWEN_NOTICE}" [Qwen §3(c)]' in out["obligations"]
    code, out = check(capsys, "acme/base-bsd", "acme/qwen-answers", use="commercial", publish=True)
    assert code == 0 and out["attributions"] == ["Built with Qwen"]
    assert any("trained on acme/qwen-answers" in o and o.endswith("[Qwen §5(b)]") for o in out["obligations"])


# ---- licences to know --------------------------------------------------------------------------------
def test_mnpl_3_2_no_commercial_or_production_use(hub, capsys):
    seed(hub, "mistralai/Codestral-22B-v0.1", license="other", license_name="mnpl")
    code, out = check(capsys, "mistralai/Codestral-22B-v0.1", use="commercial")
    assert code == 3 and rules(out, "mistralai/Codestral-22B-v0.1")["use-not-permitted"]["clause"] == "MNPL §3.2"
    assert check(capsys, "mistralai/Codestral-22B-v0.1", use="personal")[0] == 0


def test_mrl_3_2_research_purposes_only(hub, capsys):
    seed(hub, "mistralai/Mistral-Large-Instruct-2407", license="other", license_name="mrl")
    code, out = check(capsys, "mistralai/Mistral-Large-Instruct-2407", use="personal")
    hit = rules(out, "mistralai/Mistral-Large-Instruct-2407")["use-not-permitted"]
    assert code == 3 and hit["clause"] == "MRL §3.2, §9 (Research Purposes)"
    assert check(capsys, "mistralai/Mistral-Large-Instruct-2407", use="research")[0] == 0


@pytest.mark.parametrize("lic,name,cite", [("other", "deepseek", "DeepSeek License"),
                                           ("bigscience-openrail-m", None, "BigScience OpenRAIL-M")])
def test_rail_4a_use_restrictions_pass_on_and_commercial_use_is_allowed(hub, capsys, lic, name, cite):
    repo = f"acme/rail-{name or lic}"
    seed(hub, repo, license=lic, **({"license_name": name} if name else {}))
    code, out = check(capsys, repo, use="commercial", publish=True)
    assert code == 0 and out["verdict"] == "allow"
    assert any("Attachment A" in o and o.endswith(f"[{cite} §4(a), §5]") for o in out["obligations"])
    assert any("copy of the" in o and o.endswith(f"[{cite} §4(b)]") for o in out["obligations"])


def test_cc_by_nc_3_0_4b_is_non_commercial(hub, capsys):
    seed(hub, "acme/nc3-data", "dataset", license="cc-by-nc-3.0")
    code, out = check(capsys, "hubtune:tiny-llama", "acme/nc3-data", use="commercial")
    assert code == 3 and rules(out, "acme/nc3-data")["use-not-permitted"]["clause"] == "CC BY-NC 3.0 §4(b)"


# ---- families, conservatively ---------------------------------------------------------------------
@pytest.mark.parametrize("meta", [{"license": "cc-by-nc-2.5"},
                                  {"license": "other", "license_name": "acme-non-commercial-data-licence"}],
                         ids=["cc-by-nc-2.5", "other-non-commercial"])
def test_an_unknown_id_of_a_non_commercial_family_stays_non_commercial_when_acknowledged(hub, capsys, meta):
    repo = f"acme/fam-{meta.get('license_name', meta['license'])}"
    seed(hub, repo, "dataset", **meta)
    code, out = check(capsys, "hubtune:tiny-llama", repo, use="commercial")
    found = rules(out, repo)
    assert code == 3 and {"family-reading", "use-not-permitted"} <= set(found)
    assert "NonCommercial" in found["use-not-permitted"]["clause"]
    assert "Acknowledging accepts the unknown text, not a use the family forbids" in found["family-reading"]["reason"]

    def config(use):
        return cfg.build({"data": {"sources": [repo]}, "licence": {"use": use, "acknowledge": [repo]}})

    with pytest.raises(LicenceBlocked, match="not a use its family forbids") as err:
        licence.gate_for_training(config("commercial"))
    assert "licence.acknowledge=" not in str(err.value)
    research = licence.gate_for_training(config("research"))
    assert research.verdict == "warn"
    assert any(o.startswith("Not for commercial use") for o in research.obligations)
    with pytest.raises(LicenceBlocked, match="not one hubtune knows by id"):  # and it still needs acknowledging
        licence.gate_for_training(cfg.build({"data": {"sources": [repo]}, "licence": {"use": "research"}}))


def test_an_unknown_research_licence_reads_as_research_only(hub, capsys):
    seed(hub, "acme/lab-model", license="other", license_name="acme-research-license")
    code, out = check(capsys, "acme/lab-model", use="personal")
    assert code == 3 and out["repos"][0]["read_as"] == ["licence family (research only)"]


# ---- share-alike against added restrictions -----------------------------------------------------------
@pytest.mark.parametrize("base,lic,clause", [("google/gemma-2-2b", "gemma", "Gemma ToU §3.1"),
                                             ("meta-llama/Llama-3.1-sa", "llama3.1", "Llama 3.1 §1.b.iv"),
                                             ("bigscience/bloom-sa", "bigscience-openrail-m",
                                              "BigScience OpenRAIL-M §4(a), §5")])
def test_cc_by_sa_4_0_3b3_against_passing_use_restrictions_on_warns_with_both_clauses(hub, capsys, base, lic, clause):
    seed(hub, base, license=lic)
    seed(hub, "acme/wiki-sa", "dataset", license="cc-by-sa-4.0")
    code, out = check(capsys, base, "acme/wiki-sa", use="research", publish=True)
    hit = rules(out, "acme/wiki-sa")["share-alike-vs-use-restrictions"]
    assert code == 0 and out["verdict"] == "warn" and hit["verdict"] == "warn"
    assert hit["clause"] == f"CC BY-SA 4.0 §3(b)(3); {clause}"
    assert "[CC BY-SA 4.0 §3(b)(3)]" in hit["reason"] and f"[{clause}]" in hit["reason"] and base in hit["reason"]

    seed(hub, "acme/plain-mit", license="mit")
    _, out = check(capsys, "acme/plain-mit", "acme/wiki-sa", use="research", publish=True)
    assert "share-alike-vs-use-restrictions" not in rules(out, "acme/wiki-sa")


# ---- the token's actual access to a gated repo ---------------------------------------------------------
def test_gated_repo_access_is_tested_with_the_token(hub, capsys, monkeypatch):
    seed(hub, "meta-llama/Llama-3.1-gated", gated="manual", license="llama3.1")
    url = f"{hub.url}/meta-llama/Llama-3.1-gated"

    code, out = check(capsys, "meta-llama/Llama-3.1-gated", use="research")
    assert code == 0 and out["repos"][0]["access"] == "no token"
    assert "set a token of that account" in rules(out, "meta-llama/Llama-3.1-gated")["gated-access"]["reason"]

    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    code, out = check(capsys, "meta-llama/Llama-3.1-gated", use="research")
    hit = rules(out, "meta-llama/Llama-3.1-gated")["gated-access"]
    assert out["repos"][0]["access"] == "denied" and out["verdict"] == "warn"
    assert f"accept its terms at {url} with that account, or use a token of an account that has" in hit["reason"]

    hub.grant("meta-llama/Llama-3.1-gated", "alice")
    code, out = check(capsys, "meta-llama/Llama-3.1-gated", use="research")
    assert out["repos"][0]["access"] == "granted" and out["verdict"] == "allow"
    assert "gated-access" not in rules(out, "meta-llama/Llama-3.1-gated")


# ---- the real command, in its own process ----------------------------------------------------------------
@pytest.mark.slow
def test_check_json_in_a_real_process(hub, tmp_path):
    seed(hub, "acme/base-proc", license="apache-2.0")
    seed(hub, "acme/llama2-proc", "dataset", license="llama2")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1")
    proc = subprocess.run([sys.executable, "-m", "hubtune.cli", "check", "acme/base-proc", "--dataset",
                           "acme/llama2-proc", "--use", "research", "--json"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    out = json.loads(proc.stdout)
    assert out["verdict"] == "block" and any("[Llama 2 §1.b.v]" in r for r in out["reasons"])
