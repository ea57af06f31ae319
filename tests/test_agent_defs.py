"""Agents defined in Org: the original's agent_def cases, the fallbacks that keep a prompt from
ever being empty, the async (pool-signature) path, and the deployed agents of a tenant."""

from __future__ import annotations

import os

import pytest
import trio

from workbooks.agent.definitions import AgentDef, find_agent, list_agents, load_agent_file, parse_agent
from workbooks.errors import NotFound
from workbooks.web_control.oql import InProcessOql

WALDO = """\
* Waldo                                                          :agent:
  :PROPERTIES:
  :ID:        waldo
  :MODEL:     anthropic/claude-haiku-4.5
  :TOOLKITS:  workbooks-browser workbooks-cli
  :TAGLINE:   Resident agent
  :END:

** System prompt

   You are Waldo, the resident agent.

*** Command surface

   Use `work app …` to drive the shell.

** Notes

   This must NOT be part of the prompt.
"""


# -- the original's cases -------------------------------------------------------------------------
def test_parses_id_model_space_split_toolkits_tagline():
    d = parse_agent(WALDO)
    assert (d.slug, d.name, d.model, d.tagline) == ("waldo", "Waldo", "anthropic/claude-haiku-4.5", "Resident agent")
    assert d.toolkits == ["workbooks-browser", "workbooks-cli"]


def test_system_prompt_spans_deeper_subsections_and_stops_at_the_next_sibling():
    d = parse_agent(WALDO)
    assert d.system_prompt.startswith("You are Waldo, the resident agent.")
    assert "Use `work app" in d.system_prompt  # a deeper *** subsection stays in
    assert "This must NOT be part of the prompt." not in d.system_prompt  # a sibling ** ends it


def test_footgun_no_system_prompt_heading_falls_back_to_the_body_never_empty():
    org = ("* Scout                                                          :agent:\n"
           "  :PROPERTIES:\n  :ID:        scout\n  :END:\n\n"
           "  You scout the codebase and report findings concisely.\n")
    d = parse_agent(org)
    assert d.slug == "scout"
    assert d.system_prompt == "You scout the codebase and report findings concisely."  # drawer left out


def test_no_toolkits_property_is_an_empty_list():
    d = parse_agent("* Bare :agent:\n:PROPERTIES:\n:ID: bare\n:END:\nMinimal agent.\n")
    assert d.toolkits == [] and d.system_prompt == "Minimal agent."


def test_no_agent_headline_is_none_not_an_error():
    assert parse_agent("* Just a heading\n\nSome prose, no agent tag.\n") is None
    assert parse_agent("") is None
    assert parse_agent("no headlines at all\n:agent:\n") is None


# -- beyond the original ------------------------------------------------------------------------
def test_the_first_agent_headline_wins_and_its_prompt_is_its_own():
    org = ("#+TITLE: two agents\n* Alpha :agent:\nI am alpha.\n** System prompt\nAlpha's prompt.\n"
           "* Beta :agent:\n:PROPERTIES:\n:ID: beta\n:END:\n** System prompt\nBeta's prompt.\n")
    d = parse_agent(org)
    assert d.slug == "alpha" and d.name == "Alpha" and d.system_prompt == "Alpha's prompt."


def test_a_system_prompt_outside_the_agent_subtree_is_not_taken():
    org = "* Helper :agent:\nI help with the docs.\n* System prompt\nSomeone else's prompt.\n"
    assert parse_agent(org).system_prompt == "I help with the docs."


def test_slug_comes_from_the_title_when_there_is_no_id():
    d = parse_agent("* TODO [#A] Site Keeper, v2! :ops:agent:\nKeep the site.\n")
    assert d.slug == "site-keeper-v2" and d.name == "Site Keeper, v2!"


def test_an_agent_with_no_text_at_all_still_has_a_prompt():
    assert parse_agent("* Lonely :agent:\n").system_prompt == "You are Lonely."
    d = parse_agent("* Lonely :agent:\n:PROPERTIES:\n:TAGLINE: Watches the logs\n:END:\n** Empty child\n")
    assert d.system_prompt  # subtree fallback: the child's headline line at least
    d = parse_agent("* Quiet :agent:\n:PROPERTIES:\n:TAGLINE: Watches the logs\n:END:\n")
    assert d.system_prompt == "You are Quiet. Watches the logs"


def test_subtree_is_the_fallback_when_the_headline_body_is_empty():
    org = "* Mentor :agent:\n** Style\nBe kind and brief.\n* Other\nnot this\n"
    d = parse_agent(org)
    assert "Be kind and brief." in d.system_prompt and "not this" not in d.system_prompt


def test_crlf_documents_and_planning_lines():
    org = ("* Night Watch :agent:\r\nSCHEDULED: <2026-06-15 Mon>\r\n:PROPERTIES:\r\n:ID: night\r\n"
           ":MODEL: m1\r\n:END:\r\n** System prompt\r\n:LOGBOOK:\r\n- noted\r\n:END:\r\nWatch at night.\r\n")
    d = parse_agent(org)
    assert (d.slug, d.model, d.system_prompt) == ("night", "m1", "Watch at night.")
    assert "\r" not in d.system_prompt


def test_the_async_path_through_an_oql_caller_gives_the_same_agent():
    async def main():
        oql = InProcessOql()
        return await parse_agent(WALDO, oql=oql, source="wb1")

    d = trio.run(main)
    assert d == AgentDef(**{**parse_agent(WALDO).to_dict(), "source": "wb1"})


def test_load_agent_file(tmp_path):
    p = tmp_path / "keeper.org"
    p.write_text(WALDO)
    assert load_agent_file(p).slug == "waldo" and load_agent_file(p).source == str(p)
    with pytest.raises(NotFound, match="does not exist"):
        load_agent_file(tmp_path / "missing.org")
    (tmp_path / "plain.org").write_text("* not an agent\n")
    with pytest.raises(NotFound, match="no :agent: headline"):
        load_agent_file(tmp_path / "plain.org")
    os.mkfifo(tmp_path / "fifo.org")  # a FIFO without a writer must not hang the keeper
    with pytest.raises(NotFound, match="not a regular file"):
        load_agent_file(tmp_path / "fifo.org")
    (tmp_path / "bad.org").write_bytes(b"* x :agent:\n\xff\n")
    with pytest.raises(NotFound, match="not UTF-8"):
        load_agent_file(tmp_path / "bad.org")


# -- deployed workbooks -------------------------------------------------------------------------
AGENT_WB = "#+TITLE: The keeper\n* Keeper :agent:\n:PROPERTIES:\n:ID: keeper\n:MODEL: small\n:TOOLKITS: git\n:END:\n** System prompt\nKeep the site tidy.\n"
OTHER_WB = "#+TITLE: Helper\n* Helper :agent:\n:PROPERTIES:\n:TAGLINE: answers questions\n:END:\nAnswer briefly.\n"
PLAIN_WB = "#+TITLE: Plain\n* Notes\nNothing here says :agent: in a tag.\n"


def test_deployed_agents_are_listed_per_tenant_and_found_by_slug(web):
    tenant, key = web.new_tenant("agdef")
    other, other_key = web.new_tenant("agdef")
    for wid, org in (("keeper-page", AGENT_WB), ("helper", OTHER_WB), ("plain", PLAIN_WB)):
        r = web.deploy(key, wid, org)
        assert r.status_code in (200, 201), r.text
    assert web.deploy(other_key, "secret-agent", AGENT_WB.replace("keeper", "spy")).status_code in (200, 201)

    async def main():
        oql = InProcessOql()
        listed = await list_agents(web.data_dir, tenant, oql)
        found = await find_agent(web.data_dir, tenant, "keeper", oql)
        with pytest.raises(NotFound):
            await find_agent(web.data_dir, tenant, "spy", oql)  # another tenant's agent
        with pytest.raises(NotFound):
            await find_agent(web.data_dir, tenant, "nobody", oql)
        return listed, found

    listed, found = trio.run(main)
    assert listed == [
        {"slug": "helper", "name": "Helper", "model": None, "toolkits": [], "tagline": "answers questions",
         "workbook": "helper"},
        {"slug": "keeper", "name": "Keeper", "model": "small", "toolkits": ["git"], "tagline": None,
         "workbook": "keeper-page"},
    ]
    assert found.system_prompt == "Keep the site tidy." and found.source == "keeper-page"
    # the control plane's listing is the same, and tenant-scoped
    r = web.http.get(web.control + "/api/agents/list", headers=web.auth(key))
    assert r.status_code == 200, r.text
    assert r.json()["agents"] == listed
    r = web.http.get(web.control + "/api/agents/list", headers=web.auth(other_key))
    assert [a["slug"] for a in r.json()["agents"]] == ["spy"]


def test_a_data_dir_without_an_index_has_no_agents_and_gets_none(tmp_path):
    async def main():
        return await list_agents(tmp_path, "dev", InProcessOql())

    assert trio.run(main) == []
    assert list(tmp_path.iterdir()) == []  # nothing created by a read
