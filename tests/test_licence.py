"""The licence gate: one case per known licence, model + dataset combinations, the training and
publishing gates, and `hubtune check`, with licences read from cards on the loopback Hub."""

from __future__ import annotations

import json

import pytest
from hub_server import readme

from hubtune import config as cfg
from hubtune import licence
from hubtune.cli import main
from hubtune.errors import LicenceBlocked, NamingRuleError
from hubtune.licence import RepoLicence, licence_verdict

# What each licence says, written out independently of hubtune's table:
# (license, license_name, commercial use allowed, capped commercial use, a notice the card must carry,
#  a derivative name that breaks its naming rule or None, a use policy to pass on)
CASES = [
    ("apache-2.0", None, True, None, "Apache-2.0 licence text", None, False),
    ("mit", None, True, None, "MIT licence text", None, False),
    ("bsd-2-clause", None, True, None, "BSD licence conditions", None, False),
    ("bsd-3-clause", None, True, None, "endorse", None, False),
    ("cc-by-4.0", None, True, None, "Credit", None, False),
    ("cc-by-sa-3.0", None, True, None, "Share-alike", None, False),
    ("cc-by-sa-4.0", None, True, None, "Share-alike", None, False),
    ("cc-by-nc-4.0", None, False, None, "Credit", None, False),
    ("cc-by-nc-sa-4.0", None, False, None, "Share-alike", None, False),
    ("odc-by", None, True, None, "ODC-By", None, False),
    ("llama2", None, True, "700 million", "LLAMA 2 Community License", None, True),
    ("llama3", None, True, "700 million", "Built with Meta Llama 3", "Llama-invoices", True),
    ("llama3.1", None, True, "700 million", "Built with Llama", "invoices-llama", True),
    ("llama3.2", None, True, "700 million", "Built with Llama", "invoices", True),
    ("llama3.3", None, True, "700 million", "Built with Llama", "my-llama", True),
    ("llama4", None, True, "700 million", "Built with Llama", "scout-invoices", True),
    ("gemma", None, True, None, "Gemma Terms of Use", None, True),
    ("openrail", None, True, None, "use restrictions", None, True),
    ("openrail++", None, True, None, "Attachment A", None, True),
    ("bigscience-bloom-rail-1.0", None, True, None, "Attachment A", None, True),
    ("creativeml-openrail-m", None, True, None, "Attachment A", None, True),
    ("other", "qwen", True, "100 million", "Built with Qwen", None, False),
    ("other", "qwen-research", False, None, "Built with Qwen", None, False),
    ("other", "tongyi-qianwen", True, "100 million", "Tongyi Qianwen LICENSE AGREEMENT", None, False),
    ("other", "tongyi-qianwen-research", False, None, "Tongyi Qianwen RESEARCH LICENSE AGREEMENT", None, False),
    ("other", "mnpl", False, None, "copy of the MNPL", None, False),
    ("other", "mrl", False, None, "Licensed by Mistral AI under the Mistral AI Research License", None, False),
    ("other", "deepseek", True, None, "Attachment A", None, True),
    ("bigcode-openrail-m", None, True, None, "Attachment A", None, True),
    ("bigscience-openrail-m", None, True, None, "Attachment A", None, True),
    ("other", "falcon-llm-license", True, None, "Technology Innovation Institute", None, True),
    ("other", "nvidia-open-model-license", True, None, "Licensed by NVIDIA Corporation", None, True),
    ("fair-noncommercial-research-license", None, False, None, "FAIR Noncommercial Research License", None, False),
    ("cc-by-2.0", None, True, None, "Credit", None, False),
    ("cc-by-2.5", None, True, None, "Credit", None, False),
    ("cc-by-3.0", None, True, None, "Credit", None, False),
    ("cc-by-nc-2.0", None, False, None, "Credit", None, False),
    ("cc-by-nc-3.0", None, False, None, "Credit", None, False),
    ("cc-by-nc-sa-2.0", None, False, None, "Share-alike", None, False),
    ("cc-by-nc-sa-3.0", None, False, None, "Share-alike", None, False),
    ("odbl", None, True, None, "ODbL", None, False),
    ("cdla-permissive-1.0", None, True, None, "a trained model is a Result", None, False),
    ("cdla-permissive-2.0", None, True, None, "a trained model is a Result", None, False),
    ("cdla-sharing-1.0", None, True, None, "a trained model is a Result", None, False),
    ("gpl", None, True, None, "same GNU licence", None, False),
    ("gpl-2.0", None, True, None, "same GNU licence", None, False),
    ("gpl-3.0", None, True, None, "same GNU licence", None, False),
    ("agpl-3.0", None, True, None, "over a network", None, False),
]


@pytest.mark.parametrize("lic,name,commercial,cap,notice,bad_name,policy", CASES, ids=[c[1] or c[0] for c in CASES])
def test_each_licence(hub, lic, name, commercial, cap, notice, bad_name, policy):
    repo = f"acme/model-{(name or lic).replace('+', 'p')}"
    meta = {"license": lic, **({"license_name": name, "license_link": "LICENSE"} if name else {})}
    hub.seed(repo, {"README.md": readme(**meta)})

    for_commercial = licence.check(repo, use="commercial")
    assert (for_commercial.verdict != "block") is commercial, for_commercial.reasons
    if not commercial:
        assert any(repo in r and "commercial" in r for r in for_commercial.reasons)
        assert any(o.startswith("Not for commercial use") for o in for_commercial.obligations)
    capped = [o for o in for_commercial.obligations if "monthly active users" in o]
    assert (cap in capped[0]) if cap else not capped

    for_research = licence.check(repo, use="research", publish=True)
    assert for_research.verdict in ("allow", "warn")
    assert any(notice in o for o in for_research.obligations), for_research.obligations
    if notice.startswith("Built with"):
        assert for_research.attributions == [notice]
    assert any("use restrictions" in o for o in for_research.obligations) is policy
    assert not for_research.unacknowledged()
    if bad_name:
        with pytest.raises(NamingRuleError):
            licence.gate_for_publishing(for_research.findings[0].repo, [], "research", [], f"alice/{bad_name}")
    else:
        licence.gate_for_publishing(for_research.findings[0].repo, [], "research", [], "alice/any-name")


@pytest.mark.parametrize("meta", [{"license": "other"}, {"license": "other", "license_name": "acme-custom"}, {},
                                  {"license": "unknown"}],
                         ids=["other", "other-unknown-name", "missing", "unknown"])
def test_unknown_licence_is_a_warn_that_needs_acknowledgement(hub, meta):
    repo = f"acme/unknown-{len(meta)}-{meta.get('license_name', meta.get('license', 'x'))}"
    hub.seed(repo, {"README.md": readme(**meta) if meta else "# no card metadata\n"})
    verdict = licence.check(repo, use="personal")
    assert verdict.verdict == "warn"
    assert [f.repo.ref for f in verdict.unacknowledged()] == [repo]
    assert not verdict.unacknowledged([repo])
    assert "licence.acknowledge" in verdict.reasons[0]


def test_gated_flag_is_read_from_the_hub(hub):
    hub.seed("meta-llama/Llama-3.1-8B", {"README.md": readme(license="llama3.1")}, gated="manual")
    verdict = licence.check("meta-llama/Llama-3.1-8B", use="research")
    assert verdict.to_dict()["repos"][0]["gated"] == "manual"
    assert any("is gated" in o and f"{hub.url}/meta-llama/Llama-3.1-8B" in o for o in verdict.obligations)


def test_licence_read_at_the_configured_revision(hub):
    first = hub.seed("acme/relicensed", {"README.md": readme(license="cc-by-nc-4.0")})
    hub.seed("acme/relicensed", {"README.md": readme(license="apache-2.0")})
    assert licence.check("acme/relicensed", use="commercial").verdict == "allow"
    assert licence.check("acme/relicensed", use="commercial", revision=first).verdict == "block"


# ---- combinations -----------------------------------------------------------------------------
def repo(ref, lic, repo_type="model", source="hub", name=None):
    return RepoLicence(ref, repo_type, source, [lic] if lic else [], license_name=name)


def test_non_commercial_dataset_makes_the_result_non_commercial():
    model = repo("meta-llama/Llama-3.1-8B", "llama3.1")
    data = repo("acme/nc-data", "cc-by-nc-4.0", "dataset")
    blocked = licence_verdict(model, [data], "commercial")
    assert blocked.verdict == "block"
    assert [f.verdict for f in blocked.findings] == ["allow", "block"]
    assert any("acme/nc-data" in r and "does not permit commercial use" in r for r in blocked.reasons)
    research = licence_verdict(model, [data], "research")
    assert research.verdict in ("allow", "warn")
    assert any("Built with Llama" in o for o in research.obligations)
    assert any(o.startswith("Not for commercial use") and "acme/nc-data" in o for o in research.obligations)


def test_share_alike_data_is_a_warn_with_its_obligation():
    wiki = repo("acme/wiki", "cc-by-sa-4.0", "dataset")
    verdict = licence_verdict(repo("acme/base", "apache-2.0"), [wiki], "commercial")
    assert verdict.verdict == "warn" and not verdict.unacknowledged()
    assert any("Share-alike" in o and "acme/wiki" in o for o in verdict.obligations)


def test_no_derivatives_blocks_publishing_only():
    model, data = repo("acme/base", "mit"), repo("acme/nd", "cc-by-nd-4.0", "dataset")
    assert licence_verdict(model, [data], "commercial").verdict == "allow"
    published = licence_verdict(model, [data], "commercial", publish=True)
    assert published.verdict == "block" and "publishing derivatives" in published.reasons[-1]


def test_dataset_listing_several_licences_takes_the_strictest():
    data = RepoLicence("acme/mixed", "dataset", "hub", ["mit", "cc-by-nc-4.0"])
    assert licence_verdict(repo("acme/base", "mit"), [data], "commercial").verdict == "block"


def test_local_data_without_metadata_warns_and_needs_acknowledgement_only_to_publish(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    train = licence.check("hubtune:tiny-llama", [str(data)], use="commercial")
    assert train.verdict == "warn" and not train.unacknowledged()
    publish = licence.check("hubtune:tiny-llama", [str(data)], use="commercial", publish=True)
    # Named by its file name, never the folder it sits in; acknowledged by that name (or the old path).
    assert [f.repo.ref for f in publish.unacknowledged()] == ["mine.jsonl"]
    assert str(tmp_path) not in "\n".join(publish.reasons)
    assert not publish.unacknowledged(["mine.jsonl"]) and not publish.unacknowledged([str(data)])


def test_local_folder_reads_its_readme(tmp_path):
    (tmp_path / "README.md").write_text(readme(license="gemma"))
    verdict = licence.check(str(tmp_path), use="commercial")
    assert verdict.findings[0].repo.licences == ["gemma"] and verdict.findings[0].repo.source == "local"


def test_builtin_assets_carry_the_package_licence():
    verdict = licence.check("hubtune:tiny-llama", ["hubtune:data/invoices/train.jsonl"], use="commercial")
    assert verdict.verdict == "allow"
    assert [f.repo.licences for f in verdict.findings] == [["apache-2.0"], ["apache-2.0"]]


# ---- the gates --------------------------------------------------------------------------------
def run_config(model, dataset, use, acknowledge=()):
    return cfg.build({"model": {"id": model}, "data": {"sources": [dataset]},
                      "licence": {"use": use, "acknowledge": list(acknowledge)}})


def test_training_gate_stops_on_block_unless_acknowledged(hub):
    hub.seed("meta-llama/Llama-3.1-8B-gate", {"README.md": readme(license="llama3.1")})
    hub.seed("acme/nc-gate", {"README.md": readme(license="cc-by-nc-4.0")}, repo_type="dataset")
    with pytest.raises(LicenceBlocked) as err:
        licence.gate_for_training(run_config("meta-llama/Llama-3.1-8B-gate", "acme/nc-gate", "commercial"))
    assert err.value.exit_code == 3 and "acme/nc-gate" in str(err.value)
    assert "licence.acknowledge=['acme/nc-gate']" in str(err.value)
    passed = licence.gate_for_training(
        run_config("meta-llama/Llama-3.1-8B-gate", "acme/nc-gate", "commercial", ["acme/nc-gate"]))
    assert passed.verdict == "block"  # recorded as it is; the acknowledgement let it through
    assert licence.gate_for_training(run_config("meta-llama/Llama-3.1-8B-gate", "acme/nc-gate", "research"))


def test_training_gate_stops_on_an_unknown_hub_licence(hub):
    hub.seed("acme/mystery", {"README.md": readme(license="other")})
    with pytest.raises(LicenceBlocked, match="not one hubtune knows"):
        licence.gate_for_training(run_config("acme/mystery", "hubtune:data/invoices/train.jsonl", "personal"))
    acknowledged = run_config("acme/mystery", "hubtune:data/invoices/train.jsonl", "personal", ["acme/mystery"])
    assert licence.gate_for_training(acknowledged).verdict == "warn"


def test_training_gate_passes_the_embedded_demo():
    assert licence.gate_for_training(cfg.RunConfig()).verdict == "allow"


@pytest.mark.parametrize("lic,good,bad", [("llama3.1", "Llama-3.1-8B-invoices", "invoices-8B"),
                                          ("llama3", "Llama-3-invoices", "Llama-invoices")])
def test_naming_rule(lic, good, bad):
    model = repo("meta-llama/base", lic)
    licence.gate_for_publishing(model, [], "research", [], f"alice/{good}")
    with pytest.raises(NamingRuleError) as err:
        licence.gate_for_publishing(model, [], "research", [], f"alice/{bad}")
    assert f"alice/{bad}" in str(err.value) and "must begin with" in str(err.value)
    assert "alice/Llama-" in str(err.value)  # the suggested name
    assert err.value.exit_code == 3


# ---- hubtune check ----------------------------------------------------------------------------
def test_check_cli_table_json_and_exit_codes(hub, capsys):
    hub.seed("meta-llama/Llama-3.1-cli", {"README.md": readme(license="llama3.1")}, gated="manual")
    hub.seed("acme/nc-cli", {"README.md": readme(license="cc-by-nc-4.0")}, repo_type="dataset")
    args = ["check", "meta-llama/Llama-3.1-cli", "--dataset", "acme/nc-cli"]

    assert main([*args, "--use", "commercial", "--json"]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "block" and any("acme/nc-cli" in r for r in out["reasons"])
    assert [(r["repo"], r["licence"], r["gated"]) for r in out["repos"]] == [
        ("meta-llama/Llama-3.1-cli", "llama3.1", "manual"), ("acme/nc-cli", "cc-by-nc-4.0", False)]
    assert isinstance(out["obligations"], list)

    assert main([*args, "--use", "research"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["repo", "type", "licence", "gated", "access", "verdict"]
    assert "meta-llama/Llama-3.1-cli" in table and "manual" in table and "Built with Llama" in table
    assert "no token" in table  # the gated repo's access was asked for, and there is no token to ask with


def test_check_cli_on_a_missing_repo_prints_the_fix(hub, capsys):
    assert main(["check", "acme/nope"]) == 2
    assert "model acme/nope was not found" in capsys.readouterr().err
