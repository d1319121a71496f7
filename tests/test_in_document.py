"""Polysemantic samples traced inside their documents (issue 12, item 2): each sample found on
its recorded line, at least 64 tokens of preceding text kept, and the traced occurrence marks
exactly the target token."""

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from moe_lib.analysis import in_document
from moe_lib.data import contextual_documents as placing
from moe_lib.data.contextual import find_target_spans, write_token_file
from moe_lib.data.vocab import DEFAULT_TOKENIZER_DIR, load_tokenizer
from moe_lib.models.registry import PROJECT_ROOT

COMMITTED = PROJECT_ROOT / "datasets" / "contextual-tokens"


@pytest.fixture(scope="module")
def project_tokenizer():
    return load_tokenizer(DEFAULT_TOKENIZER_DIR)


def test_a_sentence_is_found_across_lines_and_a_code_line_with_its_indentation():
    document = "Title\n\nThe river rose. Its bank\nwas steep and wet.\n\ndef f():\n    return x\n"
    start = placing.locate_sample(document, "Its bank was steep and wet.", line=3)
    assert document[start:].startswith("Its bank\nwas steep")
    code = placing.locate_sample(document, "    return x", line=7)
    assert document[code:code + 12] == "    return x"
    assert placing.locate_sample(document, "Its bank was steep and wet.", line=4) is None  # not on that line
    assert placing.locate_sample(document, "        return x", line=7) is None  # indentation differs


def test_sources_are_parsed_and_a_malformed_one_is_named():
    assert placing.parse_source("python-stdlib:http/cookies.py#1:line 112 [validation]") == (
        "python-stdlib:http/cookies.py#1", 112, "validation")
    with pytest.raises(ValueError, match="'sotu:1848 line 3'"):
        placing.parse_source("sotu:1848 line 3")


def test_the_context_holds_at_least_the_asked_tokens_and_opens_at_a_line_or_word(project_tokenizer):
    lines = [f"Line {i} of the report says that the bank of the river was wide." for i in range(40)]
    before = "\n".join(lines) + "\n"
    context = placing.preceding_context(before, project_tokenizer, min_tokens=64)
    assert before.endswith(context)
    assert len(project_tokenizer.encode(context, add_special_tokens=False).ids) >= 64
    assert context.startswith("Line ")  # a short line: cut at its start
    one_line = " ".join(lines)  # no line break: cut after a space
    context = placing.preceding_context(one_line, project_tokenizer, min_tokens=64)
    assert one_line[len(one_line) - len(context) - 1] == " "
    assert placing.preceding_context("Short text. ", project_tokenizer) == "Short text. "  # all of it


def test_a_placed_sample_marks_its_target_as_one_token_after_the_context(project_tokenizer):
    document = "\n".join(f"The committee met on day {i} and read its papers aloud." for i in range(30))
    document += "\nThe national bank was chartered again.\n"
    sample = "The national bank was chartered again."
    placed = placing.placed_sample(document, sample, " bank", line=31, tokenizer=project_tokenizer, max_tokens=256)
    text = placed["preceding"] + sample
    assert document.endswith(text + "\n") and not placed["document_start"]
    encoding = project_tokenizer.encode(text, add_special_tokens=False)
    assert encoding.ids[placed["context_tokens"]] == project_tokenizer.encode(" bank").ids[0]
    assert placed["context_tokens"] >= 64
    # a target that would fall past the traced length is refused
    assert placing.placed_sample(document, sample, " bank", 31, project_tokenizer, max_tokens=10) is None


def write_samples(directory, sources):
    texts = ["The national bank was chartered again.", "The river bank was steep."]
    item = {"token": " bank", "meanings": [
        {"meaning_label": "finance", "text_samples": texts[:1], "sample_sources": sources[:1]},
        {"meaning_label": "river", "text_samples": texts[1:], "sample_sources": sources[1:]}]}
    write_token_file(item, directory / "bank.yaml")


def test_the_file_is_built_read_and_turned_into_a_probe(tmp_path, project_tokenizer):
    from moe_lib.training.probe_traces import in_document_probe

    write_samples(tmp_path, ["speech:a:line 3 [validation]", "dictionary:b:line 1 [unused]"])
    documents = [("validation", {"id": "speech:a", "text": "Opening words.\n\nThe national bank was chartered "
                                                          "again.\n"}),
                 ("unused", {"id": "dictionary:b", "text": "The river bank was steep."}),
                 ("train", {"id": "other", "text": "never read"})]
    path, meta = placing.build_in_document(tmp_path, iter(documents), project_tokenizer, max_tokens=256)
    assert (meta["n_samples"], meta["n_placed"]) == (2, 2)
    records = placing.read_in_document(tmp_path)
    assert records[0]["preceding"] == "Opening words.\n\n" and records[1]["preceding"] == ""
    assert records[1]["document_start"] and records[1]["context_tokens"] == 2  # "The", " river"
    texts, labels, spans, _ = in_document_probe(tmp_path)
    assert texts[0] == "Opening words.\n\nThe national bank was chartered again."
    assert [text[s:e] for text, ((s, e),) in zip(texts, spans)] == [" bank", " bank"]
    assert labels["meaning"] == ["finance", "river"] and labels["opens_sample"] == [False, False]
    # samples rebuilt from elsewhere: the file no longer matches, and the probe says how to remake it
    write_samples(tmp_path, ["speech:a:line 3 [validation]", "dictionary:c:line 1 [unused]"])
    with pytest.raises(ValueError, match="build-in-document"):
        in_document_probe(tmp_path)


def test_a_sample_whose_document_is_missing_is_left_out_and_counted(tmp_path, project_tokenizer):
    write_samples(tmp_path, ["speech:a:line 1 [validation]", "dictionary:gone:line 1 [unused]"])
    documents = [("validation", {"id": "speech:a", "text": "The national bank was chartered again."})]
    _, meta = placing.build_in_document(tmp_path, iter(documents), project_tokenizer, max_tokens=256)
    assert meta["n_placed"] == 1 and meta["left_out"]["document not found"] == 1


def test_a_malformed_record_is_named_by_line_and_field(tmp_path):
    good = {"token": " bank", "meaning": "river", "sample_index": 0, "source": "x:line 1 [train]",
            "preceding": "", "document_start": True, "context_tokens": 0}
    (tmp_path / placing.FILE_NAME).write_text(json.dumps(good) + "\n" + json.dumps({**good, "preceding": None}) + "\n")
    with pytest.raises(ValueError, match=r"line 2: field 'preceding'"):
        placing.read_in_document(tmp_path)
    with pytest.raises(FileNotFoundError, match="build-in-document"):
        placing.read_in_document(tmp_path / "elsewhere")


def test_the_committed_in_document_texts_mark_exactly_their_target_token():
    """Every committed sample, after its context, is cut with the target as one token of the
    target's id, and the isolated sample ends the text unchanged."""
    from transformers import AutoTokenizer

    from moe_lib.data.contextual import target_token_mask
    from moe_lib.training.probe_traces import MAX_LENGTH, contextual_probe, in_document_probe

    texts, labels, spans, _ = in_document_probe(COMMITTED)
    alone, _, _, _ = contextual_probe(COMMITTED)
    assert len(texts) == len(alone)  # every sample placed
    assert all(text.endswith(sample) for text, sample in zip(texts, alone))
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_TOKENIZER_DIR)
    encoded = tokenizer(texts, return_offsets_mapping=True, truncation=True, max_length=MAX_LENGTH)
    for i, (ids, offsets) in enumerate(zip(encoded["input_ids"], encoded["offset_mapping"])):
        marked = np.flatnonzero(target_token_mask(offsets, spans[i]))
        assert [ids[j] for j in marked] == tokenizer(labels["target"][i], add_special_tokens=False)["input_ids"]
        assert marked[0] - sum(o == (0, 0) for o in offsets[:marked[0]]) == labels["context_tokens"][i]
    short = [start for n, start in zip(labels["context_tokens"], labels["document_start"])
             if n < placing.MIN_CONTEXT_TOKENS]
    assert short and all(short)  # fewer tokens only where the document has no more


def test_other_documents_text_keeps_the_position_and_says_nothing_of_the_source(project_tokenizer):
    # four samples of " bank" / "bank" from three sources (one opens its document), and a
    # sample of " river" from a fourth: every sample has a donor of another source and token
    prefaces = ["The river rose over the low bank of the\n", "def f(x):\n    return x\n" * 6, "",
                "Lord, have mercy upon us, and upon the land. " * 3,
                "Experts route the tokens they are given, one layer after another. " * 4]
    samples = ["bank was steep.", "The bank lent money.", "bank", "\nbank notes", "A river bank."]
    tokens = ["bank", " bank", "bank", "bank", " river"]
    genres = ["dict", "sotu", "dict", "bible", "essay"]
    spans = [find_target_spans(sample, token)[0] for sample, token in zip(samples, tokens)]
    placed = placing.other_document_contexts(prefaces, samples, spans, tokens, genres, project_tokenizer, seed=3)
    own = [placing.target_index(p, s, span, t, project_tokenizer) for p, s, span, t in zip(prefaces, samples, spans, tokens)]
    for i, got in enumerate(placed):
        if not prefaces[i]:
            assert got == {"preceding": "", "donor": -1, "context_tokens": own[i]}
            continue
        assert genres[got["donor"]] != genres[i] and tokens[got["donor"]] != tokens[i]
        assert prefaces[got["donor"]].endswith(got["preceding"]) or got["preceding"].endswith(prefaces[got["donor"]])
        assert got["context_tokens"] == own[i]  # the position is kept exactly
        assert got["context_tokens"] == placing.target_index(got["preceding"], samples[i], spans[i], tokens[i],
                                                              project_tokenizer)
    assert placed == placing.other_document_contexts(prefaces, samples, spans, tokens, genres, project_tokenizer, seed=3)
    with pytest.raises(ValueError, match="no other documents' text fits"):  # one source only: no donor
        placing.other_document_contexts(prefaces[:2], samples[:2], spans[:2], tokens[:2], ["x", "x"], project_tokenizer)


def test_the_position_control_marks_the_target_where_its_document_put_it():
    from moe_lib.analysis.crosslayer import corpus_source
    from moe_lib.site.probes import in_document_probe, in_other_document_probe

    texts, labels, spans, _ = in_other_document_probe(COMMITTED)
    own_texts, own_labels, _, _ = in_document_probe(COMMITTED)
    assert len(texts) == len(own_texts) and labels["target"] == own_labels["target"]
    shift = np.array(labels["context_tokens"]) - np.array(own_labels["context_tokens"])
    assert not shift.any()  # every target where its own document put it
    donors, own_sources = np.array(labels["donor_source"]), corpus_source(labels["source"])
    empty = np.array([not record["preceding"] for record in placing.read_in_document(COMMITTED)])
    assert (donors[~empty] != own_sources[~empty]).all() and (donors[empty] == "").all()  # nothing to stand in for
    for text, own, span, token in zip(texts, own_texts, spans, labels["target"]):
        assert text[span[0][0]:span[0][1]] == token.lstrip() or text[span[0][0]:span[0][1]] == token


def test_a_trace_of_in_document_texts_marks_one_target_per_sequence(project_tokenizer):
    from transformers import AutoTokenizer

    from moe_lib.core.traces import collect_trace
    from moe_lib.models.tiny import tiny_model
    from moe_lib.training.probe_traces import in_document_probe

    texts, labels, spans, _ = in_document_probe(COMMITTED)
    pick = list(range(0, len(texts), len(texts) // 12))[:12]
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_TOKENIZER_DIR)
    model = tiny_model("olmoe", vocab_size=project_tokenizer.get_vocab_size())
    ds = collect_trace(model, tokenizer, [texts[i] for i in pick], target_spans=[spans[i] for i in pick],
                       labels={k: [values[i] for i in pick] for k, values in labels.items()}, progress=False)
    for seq, i in enumerate(pick):
        rows = ds.seq.values == seq
        targets = ds.is_target.values[rows]
        assert targets.sum() == 1
        assert ds.token_id.values[rows][targets][0] == project_tokenizer.encode(labels["target"][i]).ids[0]
        assert ds.pos.values[rows][targets][0] == labels["context_tokens"][i]


def occurrences(n=400, seed=0) -> xr.Dataset:
    """Target occurrences of one token with two meanings; routes follow meaning except for
    the occurrences that open their sample, routed at random (as alone, with nothing read)."""
    rng = np.random.default_rng(seed)
    meaning = rng.integers(0, 2, n)
    opens = np.arange(n) % 4 == 0
    expert = np.where(opens, rng.integers(0, 4, n), meaning)
    ids = np.stack([expert, expert + 4], axis=-1)[:, None, :].astype(np.int16)
    return xr.Dataset(
        {"expert_id": (("token", "layer", "slot"), ids)},
        coords={"layer": [0], "token_id": ("token", np.full(n, 100)), "meaning": ("token", meaning.astype(str)),
                "source": ("token", np.full(n, "speech:doc:line 1 [validation]")),
                "is_target": ("token", np.ones(n, bool)), "opens_sample": ("token", opens),
                "seq": ("token", np.arange(n)), "pos": ("token", np.full(n, 70)),
                "token_str": ("token", np.full(n, " bank")), "context_tokens": ("token", np.full(n, 70))})


def test_meaning_is_measured_apart_for_the_occurrences_that_open_their_sample():
    table = in_document.information_by_opening(occurrences(), n_perm=50)
    bits = table[table.measure == "I(E; M | T)"].set_index("group").excess
    assert bits["after text in its sample"] > 0.9 and abs(bits["opens its sample"]) < 0.05
    assert table.groupby("group").n_occurrences.first().to_dict() == {"opens its sample": 100,
                                                                      "after text in its sample": 300}


def test_context_lengths_count_what_each_occurrence_has_read():
    ds = occurrences(n=8)
    ds = ds.assign_coords(context_tokens=("token", [0, 10, 64, 70, 80, 90, 100, 200]))
    row = in_document.context_lengths(ds).iloc[0]
    assert (row.n_occurrences, row.n_opening_sample, row.n_short_context) == (8, 2, 2)
    assert row.median_context_tokens == 75
    assert row.n_no_context == 8  # each occurrence is a sequence of its own: nothing read before it
    assert isinstance(in_document.context_lengths(ds), pd.DataFrame)


def test_alone_and_in_document_pairs_the_same_rows_and_names_a_missing_one():
    from moe_lib.site.in_document import alone_and_in_document

    def table(excess):
        return pd.DataFrame({"model": "m", "layer": [0, 0, 1, 1], "measure": ["I(E; M | T)", "I(E; T)"] * 2,
                             "excess": excess, "p": 0.01, "n_occurrences": 10})

    pair = alone_and_in_document(table([0.1, 2.0, 0.2, 2.1]), table([0.3, 2.2, 0.1, 2.0]), measures=("I(E; M | T)",))
    assert pair[["layer", "excess_alone", "excess_in_document"]].values.tolist() == [[0, 0.1, 0.3], [1, 0.2, 0.1]]
    assert pair.difference.round(3).tolist() == [0.2, -0.1]
    with pytest.raises(ValueError, match="lacks rows"):
        alone_and_in_document(table([0.1, 2.0, 0.2, 2.1]), table([0.3, 2.2, 0.1, 2.0]).iloc[1:])
    # the position control splits the difference in two: after other text, then own text at the same place
    three = alone_and_in_document(table([0.1, 2.0, 0.2, 2.1]), table([0.3, 2.2, 0.1, 2.0]), measures=("I(E; M | T)",),
                                  other_document=table([0.15, 2.0, 0.3, 2.0]))
    assert three.other_minus_alone.round(3).tolist() == [0.05, 0.1]
    assert three.own_minus_other.round(3).tolist() == [0.15, -0.2]
    with pytest.raises(ValueError, match="other-document table lacks rows"):
        alone_and_in_document(table([0.1, 2.0, 0.2, 2.1]), table([0.3, 2.2, 0.1, 2.0]),
                              other_document=table([0.15, 2.0, 0.3, 2.0]).iloc[:2])
