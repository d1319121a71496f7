"""The routing explorer (issue 14): its data against the traces they come from, the page's
size cap, the expert cards, and the page itself in headless Chromium with the network off."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers_traces import make_trace, random_trace

from moe_lib.site import expert_cards, explorer, explorer_page

MEANINGS = {" bank": ["finance", "river"], ":": ["slice", "dict", "block"]}


def contextual_trace(meanings=MEANINGS, n_per_meaning: int = 30, n_layers: int = 4, n_experts: int = 16,
                     text_len: int = 27, seed: int = 0):
    """A contextual-probe-like trace: one text per occurrence, the target at a random
    position, top-2 routes drawn at random, token strings of a few characters."""
    rng = np.random.default_rng(seed)
    labels = [(t, m) for t, ms in meanings.items() for m in ms for _ in range(n_per_meaning)]
    n_texts = len(labels)
    n_tokens = n_texts * text_len
    seq = np.repeat(np.arange(n_texts), text_len)
    pos = np.tile(np.arange(text_len), n_texts)
    centre = np.arange(n_texts) * text_len + rng.integers(0, text_len, n_texts)
    token_str = np.array([" w" + "abcdefgh"[i % 8] * (1 + i % 4) for i in range(n_tokens)], dtype=object)
    token_str[centre] = [t for t, _ in labels]
    ids = np.argsort(rng.random((n_tokens, n_layers, n_experts)), axis=-1)[..., :2]  # two distinct experts
    is_target = np.zeros(n_tokens, bool)
    is_target[centre] = True
    per_text = lambda values: np.repeat(np.asarray(values, object), text_len)
    return make_trace(ids, n_experts, seq=seq, pos=pos, token_str=token_str,
                      token_id=pd.factorize(token_str)[0], labels={
                          "is_target": is_target, "target": per_text([t for t, _ in labels]),
                          "meaning": per_text([m for _, m in labels]),
                          "source": per_text([f"corpus:doc-{i}.txt#0:line {i} [validation]" for i in range(n_texts)])})


def domains_trace(n_layers: int = 4, n_experts: int = 16, n_tokens: int = 12_000, seed: int = 0):
    """A domains-probe-like trace: random_trace's texts, domains and skewed loads."""
    ds = random_trace(n_tokens=n_tokens, n_layers=n_layers, n_experts=n_experts, seed=seed, seq_len=256, n_vocab=400)
    return ds.assign_coords(token_str=("token", np.array([f" v{i}" for i in ds["token_id"].values], dtype=object)))


@pytest.fixture(scope="module")
def contextual():
    return contextual_trace()


@pytest.fixture(scope="module")
def domains():
    return domains_trace()


def test_occurrence_routes_are_the_traces_top1_experts_and_windows_its_text(contextual):
    table = explorer.occurrence_table(contextual, n_per_meaning=12, half_width=5)
    ids = contextual["expert_id"].values  # (token, layer, slot)
    strings, seq = contextual["token_str"].values, contextual["seq"].values
    assert set(table.groupby(["target", "meaning"]).size()) == {12}
    assert contextual["is_target"].values[table["token"]].all()
    for row in table.itertuples():
        assert json.loads(row.route) == ids[row.token, :, 0].tolist()
        pieces, marks = json.loads(row.pieces), json.loads(row.marks)
        start = row.token - row.centre
        assert pieces == strings[start:start + len(pieces)].tolist() and pieces[row.centre] == row.target
        assert len(pieces) <= 11 and (seq[start:start + len(pieces)] == seq[row.token]).all()
        for layer, layer_marks in enumerate(marks):
            expert = ids[row.token, layer, 0]
            window = ids[start:start + len(pieces), layer]
            expected = np.where(window[:, 0] == expert, "1", np.where((window[:, 1:] == expert).any(axis=1), "2", "0"))
            assert layer_marks == "".join(expected) and layer_marks[row.centre] == "1"


def test_a_meaning_with_fewer_occurrences_than_the_draw_keeps_them_all(contextual):
    table = explorer.occurrence_table(contextual, n_per_meaning=1000)
    assert len(table) == int(contextual["is_target"].values.sum())
    again = explorer.occurrence_table(contextual, n_per_meaning=5, seed=1)
    assert not again["token"].equals(explorer.occurrence_table(contextual, n_per_meaning=5, seed=2)["token"])


def test_route_counts_count_every_occurrence_once(contextual):
    counts = explorer.route_counts(contextual)
    assert counts["n_occurrences"].sum() == int(contextual["is_target"].values.sum())
    rows = np.flatnonzero(contextual["is_target"].values)
    first = counts.iloc[0]
    route = np.array([int(e) for e in first["route"].split("-")])
    top1 = contextual["expert_id"].values[rows, :, 0]
    meaning = contextual["meaning"].values[rows]
    assert first["n_occurrences"] == ((top1 == route).all(axis=1) & (meaning == first["meaning"])).sum()


def test_route_sharing_from_hand_made_counts():
    routes = pd.DataFrame({"target": ["a"] * 4, "meaning": ["x", "y", "x", "y"], "route": ["1-2", "1-2", "3-4", "5-6"],
                           "n_occurrences": [6, 2, 1, 1]})
    row = explorer.route_sharing(routes).iloc[0]
    assert (row["n_occurrences"], row["n_routes"]) == (10, 3)
    assert row["top_route_share"] == pytest.approx(0.8) and row["shared_share"] == pytest.approx(0.8)


def test_expert_table_matches_the_trace(domains):
    table = explorer.expert_table(domains, n_top=5, n_examples=2, half_width=4)
    ids = domains["expert_id"].values
    assert len(table) == 4 * 16
    assert (table.groupby("layer")["n_top1"].sum() == domains.sizes["token"]).all()
    assert np.allclose(table.groupby("layer")["load"].sum(), 1)
    strings, domain = domains["token_str"].values, domains["domain"].values
    for row in table.itertuples():
        layer = list(domains["layer"].values).index(row.layer)
        mine = ids[:, layer, 0] == row.expert
        shares = json.loads(row.domains)
        assert sum(s for _, s, _ in shares) == pytest.approx(1, abs=1e-3)
        assert sum(p for _, _, p in shares) == pytest.approx(1, abs=1e-3)
        assert {d: s for d, s, _ in shares} == pytest.approx(
            pd.Series(domain[mine]).value_counts(normalize=True).to_dict(), abs=1e-4)
        top = json.loads(row.top_tokens)
        assert [n for _, n, _ in top] == sorted((n for _, n, _ in top), reverse=True)
        assert top[0][1] == pd.Series(strings[mine]).value_counts().iloc[0]
        for example in json.loads(row.examples):
            assert example["marks"][example["centre"]] == "1" and len(example["pieces"]) == len(example["marks"]) <= 9


def test_page_data_holds_every_meaning_and_expert(contextual, domains):
    tables = _tables([("m1", contextual, domains)])
    data = explorer_page.page_data(*tables)
    model = data["models"][0]
    assert model["layers"] == [0, 1, 2, 3] and model["n_experts"] == 16
    assert {t["target"]: [m["meaning"] for m in t["meanings"]] for t in model["targets"]} == \
        {t: sorted(ms) for t, ms in MEANINGS.items()}
    assert all(m["n_occurrences"] == 30 and len(m["occurrences"]) == explorer_page.N_PER_MEANING
               for t in model["targets"] for m in t["meanings"])
    assert [len(layer) for layer in model["experts"]] == [16] * 4


def _tables(models):
    """Return the three explorer tables of ``[(name, contextual, domains)]``, as per_model stacks them."""
    occurrences = pd.concat([explorer.occurrence_table(c, n_per_meaning=explorer_page.N_PER_MEANING).assign(model=n)
                             for n, c, _ in models], ignore_index=True)
    routes = pd.concat([explorer.route_counts(c).assign(model=n) for n, c, _ in models], ignore_index=True)
    experts = pd.concat([explorer.expert_table(d, n_examples=explorer_page.N_EXAMPLES).assign(model=n)
                         for n, _, d in models], ignore_index=True)
    return occurrences, routes, experts


@pytest.fixture(scope="module")
def default_sized():
    """Three models of the default models' shape (4 layers, 16 experts), each with the
    contextual probe's size (81 meanings x 60 samples of ~27 tokens) in synthetic texts."""
    meanings = {f" t{i}": ["a", "b", "c"] for i in range(27)}
    return [(name, contextual_trace(meanings, n_per_meaning=60, seed=i), domains_trace(seed=i))
            for i, name in enumerate(["standard", "cross-layer", "third"])]


def test_two_default_sized_models_fit_the_page_with_every_drawn_occurrence(default_sized):
    data = explorer_page.page_data(*_tables(default_sized[:2]))
    assert len(explorer_page.data_json(data).encode()) < explorer_page.PAGE_BUDGET < explorer_page.MAX_PAGE_BYTES
    drawn = {len(m["occurrences"]) for model in data["models"] for t in model["targets"] for m in t["meanings"]}
    assert drawn == {explorer_page.N_PER_MEANING}


def test_more_models_draw_fewer_occurrences_to_stay_under_the_budget(default_sized):
    data = explorer_page.page_data(*_tables(default_sized))
    assert len(explorer_page.data_json(data).encode()) <= explorer_page.PAGE_BUDGET
    drawn = {len(m["occurrences"]) for model in data["models"] for t in model["targets"] for m in t["meanings"]}
    assert len(drawn) == 1 and 1 <= drawn.pop() < explorer_page.N_PER_MEANING
    assert [len(model["experts"]) for model in data["models"]] == [4, 4, 4]


def test_the_widget_refuses_data_over_the_cap_and_escapes_script_ends(monkeypatch):
    data = {"models": [], "text": "</script><script>alert(1)</script>"}
    fragment = explorer_page.widget_html(data)
    assert "</script><script>alert" not in fragment
    payload = fragment.split('-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(payload) == data
    monkeypatch.setattr(explorer_page, "MAX_PAGE_BYTES", 100)
    with pytest.raises(ValueError, match="over the page's cap"):
        explorer_page.widget_html({"models": [], "text": "x" * 200})


def test_cards_have_one_anchor_per_expert_and_escape_tokens(domains):
    experts = explorer.expert_table(domains, n_examples=1).assign(model="m1")
    experts.loc[0, "top_tokens"] = json.dumps([["</div>```", 3, 0.5]])
    markdown = expert_cards.cards_markdown(experts)
    for row in experts.itertuples():
        assert markdown.count(f'id="m1-L{row.layer}-E{row.expert}"') == 1
    assert "## m1 {#m1}" in markdown and "### Layer 3 {#m1-L3}" in markdown
    assert "</div>```" not in markdown and "&lt;/div&gt;&#96;&#96;&#96;" in markdown
    assert "<strong>Importance</strong>" not in markdown  # no measure given, none shown


def test_cards_show_importance_when_given(domains):
    experts = explorer.expert_table(domains, n_examples=1).assign(model="m1")
    importance = pd.DataFrame({"model": ["m1"], "layer": [2], "expert": [5], "delta_loss": [0.0123]})
    markdown = expert_cards.cards_markdown(experts, importance)
    card = markdown.split('id="m1-L2-E5"')[1].split("</article>")[0]
    assert "<strong>Importance</strong>: delta_loss: 0.0123" in card
    assert markdown.count("<strong>Importance</strong>") == 1
