"""The cached tables of an ablation run: the sample, the grid, the lens, and their key.

What ``python -m moe_lib ablate`` writes and the ablations chapter reads, built in one
place so that both land in the same stores under the same keys:

- :func:`mmlu_items` and :func:`heldout_items` pick the seeded sample;
- :func:`grid_table` runs the grid of :mod:`moe_lib.interventions.ablation` on it, and
  :func:`lens_table` the logit lens of :mod:`moe_lib.interventions.lens` under
  :func:`lens_conditions`;
- :func:`run_identity` is what keys them, and :func:`cached_tables` reads them from the
  cache or computes and stores them.

:func:`large_blocks_by_mmap` keeps a long grid's memory flat; :func:`cached_tables` calls it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from moe_lib.interventions import ablation
from moe_lib.interventions.lens import logit_lens, summarize_lens

ABLATION_VERSION = 1  # bump when what the grid computes changes: it is part of every key
BENCHMARKS = ("mmlu", "heldout")


def large_blocks_by_mmap(threshold: int = 1 << 16) -> bool:
    """Return whether glibc's malloc now serves every block over ``threshold`` bytes by mmap
    (given back to the system when freed); False, changing nothing, off glibc.

    The grid allocates logits of another size for every batch (texts differ in length).
    By default glibc raises its mmap threshold after each such free and keeps later blocks
    in the heap, which fragments: the default models' held-out grid grew past 21 GB
    resident and was killed, while six of its batches peak at 0.59 GB with this setting
    against 5.6 GB without. The setting lasts for the process (glibc cannot go back to its
    adaptive threshold), which is why this is a call and not a context manager.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, threshold))


# -- the sample ---------------------------------------------------------------------------
def mmlu_items(
    *, split: str = "test", n_questions: int = 1000, n_shots: int = 5, seed: int = 0,
    source: str = "olmo", root: Path | None = None,
) -> tuple[list[str], dict]:
    """Return the prompts of a seeded sample of ``n_questions`` MMLU questions of ``split``
    (each after ``n_shots`` solved dev questions) and their labels: ``answer`` (0-3),
    ``subject``, ``domain``, ``row``. ``source`` and ``root`` as :func:`moe_lib.data.mmlu.load_mmlu`."""
    from moe_lib.data.mmlu import format_prompt, load_mmlu, sample_questions

    table = load_mmlu(split, source=source, root=root)
    dev = load_mmlu("dev", source=source, root=root)
    questions = sample_questions(table, min(n_questions, len(table)), seed).merge(table, on=["subject", "row"])
    prompts = [format_prompt(row, dev, n_shots) for _, row in questions.iterrows()]
    labels = {name: questions[name].tolist() for name in ("answer", "subject", "domain", "row")}
    return prompts, labels


def chat_prompts(prompts: Sequence[str], tokenizer) -> list[str]:
    """Return each plain prompt as one user turn in the tokenizer's chat template, followed
    by the opening of the assistant's turn: the model's first token is then its answer.

    This is how instruction-tuned checkpoints are evaluated on MMLU with a chat template
    (e.g. OLMoE-1B-7B-0125-Instruct with three solved examples: ``--prompt chat --n-shots 3``).
    """
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("--prompt chat: this model's tokenizer has no chat template (tokenizer_config.json "
                         "'chat_template'); use --prompt plain for a base model")
    return [tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                          add_generation_prompt=True) for prompt in prompts]


def heldout_items(corpus: Path, *, n_docs: int = 60, seed: int = 0) -> tuple[list[str], dict]:
    """Return up to ``n_docs`` texts per domain of the ``corpus`` .jsonl (seeded) and their
    labels: ``id``, ``domain``, ``language``."""
    from moe_lib.data.corpus import read_documents

    corpus = Path(corpus)
    if not corpus.is_file():
        raise FileNotFoundError(f"{corpus}: no held-out corpus; build it with `python -m moe_lib corpus`")
    documents = read_documents(corpus)
    rng = np.random.default_rng(seed)
    picked = []
    for domain in sorted({d["domain"] for d in documents}):
        in_domain = [d for d in documents if d["domain"] == domain]
        chosen = rng.choice(len(in_domain), size=min(n_docs, len(in_domain)), replace=False)
        picked += [in_domain[i] for i in sorted(chosen)]
    labels = {name: [d[name] for d in picked] for name in ("id", "domain", "language")}
    return [d["text"] for d in picked], labels


PROMPTS = ("plain", "chat")


@dataclasses.dataclass
class RunSettings:
    """What a run is made of besides the model: the defaults of ``python -m moe_lib ablate``,
    which builds its options from these fields, as the ablations chapter does."""

    benchmark: str
    grid: str = "default"  # "default", "full" or "layers": see ablation.grid_conditions
    n_questions: int = 1000  # MMLU questions, a seeded sample
    n_shots: int = 5  # solved dev questions before each MMLU question
    prompt: str = "plain"  # MMLU prompts: "plain" text, or "chat" (in the tokenizer's chat template)
    split: str = "test"  # MMLU split
    mmlu_source: str = "olmo"  # see moe_lib.data.mmlu
    mmlu_root: Path | None = None
    corpus: Path = Path("datasets/corpus/validation.jsonl")  # held-out .jsonl (id, domain, text)
    n_docs: int = 60  # held-out texts per domain, seeded
    max_length: int | None = None  # tokens per text; None: see max_length_for
    batch_size: int = 8
    seed: int = 0  # sample, random controls and bootstrap

    def __post_init__(self):
        _check_benchmark(self.benchmark)
        if self.prompt not in PROMPTS:
            raise ValueError(f"prompt={self.prompt!r}: expected one of {PROMPTS}")

    def max_length_for(self, model) -> int:
        """Return the tokens kept per text: ``max_length`` if set, else the model's positions
        for MMLU (each prompt's end is kept) and 256 tokens of held-out text, within them."""
        positions = int(model.config.max_position_embeddings)
        if self.max_length is not None:
            return self.max_length
        return positions if self.benchmark == "mmlu" else min(256, positions)


def sample(settings: RunSettings, tokenizer=None) -> tuple[list[str], dict]:
    """Return the texts and labels of a run: a seeded MMLU sample or held-out texts.
    Chat prompts need the model's ``tokenizer`` (its chat template)."""
    if settings.benchmark == "mmlu":
        prompts, labels = mmlu_items(split=settings.split, n_questions=settings.n_questions, n_shots=settings.n_shots,
                                     seed=settings.seed, source=settings.mmlu_source, root=settings.mmlu_root)
        return (chat_prompts(prompts, tokenizer) if settings.prompt == "chat" else prompts), labels
    return heldout_items(settings.corpus, n_docs=settings.n_docs, seed=settings.seed)


# -- the tables ---------------------------------------------------------------------------
def lens_conditions() -> list[ablation.Condition]:
    """Return the lens's conditions: baseline, top-1 removed in all layers, its random control."""
    return [ablation.Condition(), ablation.Condition("all", "0"), ablation.Condition("all", "0", random_control=True)]


def _check_benchmark(benchmark: str) -> None:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark!r}: choose from {BENCHMARKS}")


def grid_table(
    model, tokenizer, texts: Sequence[str], labels: dict, *, benchmark: str, name: str,
    grid: str = "default", batch_size: int = 8, max_length: int | None = None, seed: int = 0,
) -> pd.DataFrame:
    """Return the grid's rows per item and condition, with the items' labels and ``model`` = ``name``.

    ``benchmark="mmlu"``: rows of :func:`~moe_lib.interventions.ablation.score_multiple_choice`
    (``labels["answer"]`` are the answers); ``"heldout"``: rows of
    :func:`~moe_lib.interventions.ablation.heldout_loss` (``max_length`` required). The other
    labels join on ``item`` (``id`` renamed ``doc_id``).
    """
    from moe_lib.core.capture import find_moe_layers
    from moe_lib.models.families import family_of, top_k

    _check_benchmark(benchmark)
    family = family_of(model.config)
    conditions = ablation.grid_conditions(
        find_moe_layers(model, family), top_k(model.config), grid, bool(family.shared_experts)
    )
    kwargs = dict(batch_size=batch_size, max_length=max_length, seed=seed)
    if benchmark == "mmlu":
        results = ablation.score_multiple_choice(model, tokenizer, texts, labels["answer"], conditions, **kwargs)
    else:
        results = ablation.heldout_loss(model, tokenizer, texts, conditions, **kwargs)
    item_labels = pd.DataFrame({k: v for k, v in labels.items() if k != "answer"}).rename(columns={"id": "doc_id"})
    return results.join(item_labels, on="item").assign(model=name)


def lens_table(
    model, tokenizer, texts: Sequence[str], labels: dict, *, benchmark: str, name: str,
    batch_size: int = 8, max_length: int | None = None, seed: int = 0,
) -> pd.DataFrame:
    """Return the logit lens under each of :func:`lens_conditions`, with ``model`` = ``name``.

    ``benchmark="mmlu"``: per question and layer, the answer letter's rank and probability
    among the letters, with ``subject`` and ``domain``; ``"heldout"``: per domain and layer,
    the lens summary (:func:`~moe_lib.interventions.lens.summarize_lens`) of the next tokens.
    """
    _check_benchmark(benchmark)
    frames = []
    for condition in lens_conditions():
        ablated = None if condition.is_baseline else {**condition.ablate_kwargs(), "seed": seed}
        if benchmark == "mmlu":
            letters = ablation.answer_letter_ids(tokenizer, texts)
            batches = ablation.encode_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length, keep="end")
            answer_ids = [letters[a] for a in labels["answer"]]
            lens = logit_lens(model, batches, answer_ids=answer_ids, candidates=letters, ablation=ablated)
            lens = lens.join(pd.DataFrame({k: labels[k] for k in ("subject", "domain")}), on="item")
        else:
            batches = ablation.encode_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length)
            lens = logit_lens(model, batches, ablation=ablated)
            lens = summarize_lens(lens.join(pd.DataFrame({"domain": labels["domain"]}), on="item"), by=["domain"])
        frames.append(lens.assign(**condition.columns()))
    return pd.concat(frames, ignore_index=True).assign(model=name)


def run_identity(
    model, *, name: str, benchmark: str, texts: Sequence[str], labels: dict, max_length: int, seed: int,
    revision: str | None = None,
) -> dict:
    """Return what keys a run's lens table (its grid table adds ``grid``): the model's
    identity (:func:`~moe_lib.models.registry.model_identity`), its dtype, the benchmark,
    the sample's fingerprint, the length limit, the seed and :data:`ABLATION_VERSION`."""
    from moe_lib.core.cache import fingerprint
    from moe_lib.models.registry import model_identity

    return {
        **model_identity(model, name=name, revision=revision),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "benchmark": benchmark,
        "sample": fingerprint(texts, labels),
        "max_length": max_length,
        "seed": seed,
        "ablation_version": ABLATION_VERSION,
    }


def grid_store(benchmark: str, grid: str = "default") -> str:
    """Return the cache name of a grid's rows: ``ablation-{benchmark}`` for the default grid,
    ``ablation-{grid}-{benchmark}`` for another, so that readers keeping one run per model
    and name never take one grid for another."""
    return f"ablation-{benchmark}" if grid == "default" else f"ablation-{grid}-{benchmark}"


def cached_tables(
    model, tokenizer, texts: Sequence[str], labels: dict, *, name: str, benchmark: str, max_length: int,
    grid: str = "default", batch_size: int = 8, seed: int = 0, revision: str | None = None, lens: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Return ``(grid rows, lens rows)`` of a run from the cache, computing and storing them
    if missing; the lens is None with ``lens=False``.

    Stores :func:`grid_store` (keyed by :func:`run_identity` and ``grid``) and
    ``lens-{benchmark}`` (keyed by :func:`run_identity`); read them all back with
    :func:`~moe_lib.interventions.ablation.cached_results`. Sets :func:`large_blocks_by_mmap` first.
    """
    from moe_lib.core.cache import cached_table

    _check_benchmark(benchmark)
    large_blocks_by_mmap()
    identity = run_identity(model, name=name, benchmark=benchmark, texts=texts, labels=labels,
                            max_length=max_length, seed=seed, revision=revision)
    options = dict(benchmark=benchmark, name=name, batch_size=batch_size, max_length=max_length, seed=seed)
    grid_rows = cached_table(grid_store(benchmark, grid), {**identity, "grid": grid},
                             lambda: grid_table(model, tokenizer, texts, labels, grid=grid, **options))
    if not lens:
        return grid_rows, None
    lens_rows = cached_table(f"lens-{benchmark}", identity, lambda: lens_table(model, tokenizer, texts, labels, **options))
    return grid_rows, lens_rows
