"""The ablation grid: which experts, in which layers, a model needs, on MMLU or held-out text.

A grid is a list of :class:`Condition` (each a set of :func:`moe_lib.interventions.removal.ablate`
arguments), run batch by batch and scored per item: the answer letter's log-probability
for multiple choice, next-token loss for text. Summaries add seeded bootstrap intervals,
over items, and paired differences from the baseline.

Reusing the layers below an ablation: layers below the first ablated one compute exactly
what the baseline computes. So each batch runs the model once (the baseline), keeping the
output of the layer just below each layer where some condition starts. A condition then
runs the model's own forward with the layers below its start replaced, for that call
only, by one that returns the kept output without computing anything: the model's own
loop still builds the masks and position embeddings and threads whatever its layers pass
on (the cross-layer recipe's routing vector too), and only the layers from the start on
compute. ``reuse=False`` runs the whole model per condition: the check.

Reusing the baseline's scores where nothing changed: a score that takes ``reference`` (as
:func:`next_token_score` does) is handed the baseline's final hidden states, and scores
again only the positions whose hidden state a condition changed in some bit; the others
keep the baseline's value, which is what the naive run computes there. Removing an expert
of the last MoE layer changes only the positions routed to it (no attention follows), so
those conditions unembed about k/E of the tokens instead of all.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from moe_lib.core.capture import find_moe_layers
from moe_lib.interventions.lens import base_model, decoder_layers, unembed
from moe_lib.interventions.held_routes import RouteRecorder, hold_routes
from moe_lib.interventions.removal import ablate, select_layers
from moe_lib.models.families import family_of

LETTERS = "ABCD"
CHANCE = 1 / len(LETTERS)
BASELINE = "baseline"


# -- conditions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    """One cell of the grid: what to remove, or nothing (the baseline).

    ``experts`` removes experts by id: ``"3,5"`` in every layer of ``layers``, or
    ``"1:3,5;2:0"`` per layer (build it with :meth:`removing`). ``reroute`` masks them in
    the router instead of dropping their slots (see :mod:`moe_lib.interventions.removal`).
    """

    layers: str | tuple[int, ...] = "all"
    slots: str | None = None  # "0", "1+", "all", ... (ranks, 0 = largest weight)
    renormalize: bool = False
    shared: bool = False
    random_control: bool = False
    experts: str | None = None  # "3,5" or "1:3,5;2:0" (expert ids, per layer)
    reroute: bool = False
    weight_matched: bool = False  # control: every route loses the same weight, no expert goes
    hold_later: bool = False  # MoE layers after the last ablated one keep the baseline's routes

    @classmethod
    def removing(cls, experts_by_layer: dict[int, Sequence[int]], **options) -> Condition:
        """Return the condition removing ``{layer: expert ids}``; ``options`` as the fields."""
        by_layer = {int(layer): sorted({int(e) for e in ids}) for layer, ids in sorted(experts_by_layer.items())}
        spec = ";".join(f"{layer}:{','.join(map(str, ids))}" for layer, ids in by_layer.items())
        return cls(layers=tuple(by_layer), experts=spec, **options)

    @property
    def is_baseline(self) -> bool:
        return self.slots is None and self.experts is None and not self.shared

    @property
    def name(self) -> str:
        """Return a unique, readable label, e.g. ``"slots 0 | layers last:2 | renorm | random"``."""
        if self.is_baseline:
            return BASELINE
        layers = "layers " + (self.layers if isinstance(self.layers, str) else ",".join(map(str, self.layers)))
        parts = [f"slots {self.slots}" if self.slots else "", f"experts {self.experts}" if self.experts else "",
                 "shared" if self.shared else "", layers]
        parts += ["renorm" if self.renormalize else "", "random" if self.random_control else "",
                  "reroute" if self.reroute else "", "weight-matched" if self.weight_matched else "",
                  "later routes held" if self.hold_later else ""]
        return " | ".join(p for p in parts if p)

    def experts_by_layer(self) -> dict[int, list[int]] | list[int] | None:
        """Return ``experts`` parsed: ``{layer: ids}`` for a per-layer spec, else a list of ids."""
        if self.experts is None:
            return None
        if ":" not in self.experts:
            return [int(e) for e in self.experts.split(",")]
        by_layer = {}
        for part in self.experts.split(";"):
            layer, _, ids = part.partition(":")
            by_layer[int(layer)] = [int(e) for e in ids.split(",") if e]
        return by_layer

    def ablate_kwargs(self) -> dict:
        """Return the keyword arguments of :func:`ablate` for this condition."""
        slots = None if self.slots is None else (int(self.slots) if self.slots.isdigit() else self.slots)
        kwargs = dict(
            layers=list(self.layers) if not isinstance(self.layers, str) else self.layers,
            slots=slots,
            renormalize=self.renormalize,
            shared=self.shared,
            random_control=self.random_control,
        )
        if self.experts is not None:  # only then: older callers of ablate need not know the new keywords
            kwargs.update(experts=self.experts_by_layer(), reroute=self.reroute)
        if self.weight_matched:
            kwargs.update(weight_matched=True)
        return kwargs

    def columns(self) -> dict:
        """Return the condition as table columns (``layers`` as text)."""
        row = {"condition": self.name, **asdict(self)}
        if self.is_baseline:
            row["layers"] = ""
        elif not isinstance(self.layers, str):
            row["layers"] = ",".join(map(str, self.layers))
        row["slots"] = self.slots or ""
        row["experts"] = self.experts or ""
        for name in ("weight_matched", "hold_later"):  # columns only where used: older tables lack them
            if not row[name]:
                del row[name]
        return row


def grid_conditions(
    moe_layers: Sequence[int], top_k: int, grid: str = "default", has_shared: bool = False
) -> list[Condition]:
    """Return the conditions of a grid, baseline first.

    ``"default"``: layers all, first half, last half; slots 0 (top-1), 1+ and all; with and
    without renormalising; each with its random control. ``slots="all"`` has neither a
    renormalised variant (no weight is left) nor a distinct control (all k of k go either
    way). ``"full"`` adds first 1 and last 1 layer, every single MoE layer (slots 0 and all),
    and, where the family has them, the shared experts alone.

    ``"layers"``: each MoE layer alone loses each token's top-1 expert, four ways: free; with
    its random control (one of the k routes at random); weight-matched (every route scaled
    down by the top-1 weight's share, so the same weight goes and no expert does); and with
    the later MoE layers' routes held at the baseline's (not for the last layer, where it is
    the free condition). Free minus held is what re-routing downstream adds; free minus
    weight-matched is what losing that expert costs beyond losing its weight.
    """
    if grid == "layers":
        conditions = [Condition(slots=None)]
        for layer in moe_layers:
            variants = [{}, {"random_control": True}, {"weight_matched": True}]
            variants += [{"hold_later": True}] if layer != moe_layers[-1] else []
            conditions += [Condition((layer,), "0", **options) for options in variants]
        return conditions
    if grid not in ("default", "full"):
        raise ValueError(f"grid={grid!r}: expected 'default', 'full' or 'layers'")
    n_layers = len(moe_layers)
    half = max(1, n_layers // 2)
    layer_specs = ["all", f"first:{half}", f"last:{half}"]
    if grid == "full":
        layer_specs += [spec for spec in ("first:1", "last:1") if spec not in layer_specs]
    slot_specs = ["0", *(["1+"] if top_k > 1 else []), "all"]
    conditions = [Condition(slots=None)]
    for layers in layer_specs:
        conditions += _slot_conditions(layers, slot_specs)
    if grid == "full":
        for layer in moe_layers:
            conditions += _slot_conditions((layer,), ["0", "all"], renormalize=(False,))
        if has_shared:
            conditions += [Condition(layers=spec, shared=True) for spec in ("all", f"last:{half}")]
    return conditions


def _slot_conditions(layers, slot_specs, renormalize=(False, True)) -> list[Condition]:
    conditions = []
    for slots in slot_specs:
        for renorm in renormalize if slots != "all" else (False,):
            for control in (False, True) if slots != "all" else (False,):
                conditions.append(Condition(layers, slots, renorm, random_control=control))
    return conditions


def start_layer(condition: Condition, moe_layers: Sequence[int]) -> int | None:
    """Return the first decoder layer a condition changes (None for the baseline)."""
    if condition.is_baseline:
        return None
    return min(select_layers(condition.ablate_kwargs()["layers"], moe_layers))


# -- batches ------------------------------------------------------------------------------
def encode_batches(
    tokenizer, texts: Sequence[str], *, batch_size: int = 8, max_length: int | None = None, keep: str = "start"
) -> list[dict]:
    """Return right-padded batches of ``texts``, similar lengths together.

    Each batch holds ``input_ids`` and ``attention_mask`` (row, pos) long tensors,
    ``lengths`` and ``item`` (the texts' indices). Texts longer than ``max_length``
    tokens keep their ``"start"`` (text) or their ``"end"`` (a prompt ending in its question).
    """
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    if max_length is not None:
        encoded = [ids[:max_length] if keep == "start" else ids[-max_length:] for ids in encoded]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    batches = []
    for first in range(0, len(order), batch_size):
        items = order[first : first + batch_size]
        lengths = [len(encoded[i]) for i in items]
        if min(lengths) < 2 and keep == "start":
            raise ValueError(f"text {int(items[0])} has {min(lengths)} token(s): nothing to predict")
        input_ids = torch.full((len(items), max(lengths)), tokenizer.pad_token_id or 0, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, i in enumerate(items):
            input_ids[row, : lengths[row]] = torch.tensor(encoded[i])
            attention_mask[row, : lengths[row]] = 1
        batches.append(
            {"input_ids": input_ids, "attention_mask": attention_mask, "lengths": np.array(lengths), "item": items}
        )
    return batches


# -- running the grid ---------------------------------------------------------------------
class _KeptOutputs:
    """Forward hooks keeping, in one baseline forward, the output of the given decoder layers."""

    def __init__(self, model, layers: set[int]):
        self.outputs: dict[int, object] = {}
        modules = decoder_layers(model)
        self._handles = [modules[i].register_forward_hook(self._keep(i)) for i in sorted(layers)]

    def _keep(self, index: int):
        def hook(module, args, output):
            self.outputs[index] = output

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextlib.contextmanager
def _layers_below_replaced(model, start: int, output):
    """Within: decoder layers below ``start`` return ``output`` at once instead of computing."""
    layers = list(decoder_layers(model))[:start]
    # an instance attribute shadows the class's forward; accelerate's dispatch sets one too
    saved = [layer.__dict__.get("forward") for layer in layers]
    for layer in layers:
        # a copy each call: a layer that added to its input in place would corrupt the kept one
        layer.forward = lambda *args, **kwargs: _copied(output)
    try:
        yield
    finally:
        for layer, forward in zip(layers, saved):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


def _copied(output):
    if isinstance(output, torch.Tensor):
        return output.clone()
    if isinstance(output, tuple):
        return tuple(_copied(part) for part in output)
    return output


class BaselineOf:
    """One batch's baseline for a ``score`` that takes ``reference``: its final normed
    hidden states, and a memo for what the score derives from them (once per batch)."""

    def __init__(self, normed: torch.Tensor):
        self.normed = normed
        self.memo: dict = {}

    def changed(self, normed: torch.Tensor) -> torch.Tensor:
        """Return (row, pos) True where ``normed`` differs from the baseline in any bit (NaN too)."""
        return (normed != self.normed).any(dim=-1)


def _takes_reference(score: Callable) -> bool:
    return "reference" in inspect.signature(score).parameters


def _check_fired(ablation, condition: Condition) -> None:
    silent = ablation.silent_layers()
    if silent:
        raise RuntimeError(
            f"{condition.name}: the experts modules of layers {silent} were never called; a fused kernel "
            "may replace them (e.g. transformers' hub kernels): load the model without kernels"
        )


def _later_layers(condition: Condition, moe_layers: Sequence[int]) -> list[int]:
    """Return the MoE layers after a condition's last ablated layer (those it may hold)."""
    last = max(select_layers(condition.ablate_kwargs()["layers"], moe_layers))
    return [layer for layer in moe_layers if layer > last]


def run_grid(
    model,
    batches: Sequence[dict],
    conditions: Sequence[Condition],
    score: Callable[[torch.nn.Module, torch.Tensor, dict], pd.DataFrame],
    *,
    reuse: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Return ``score``'s per-item rows for every condition and batch, condition columns first.

    Parameters
    ----------
    batches : from :func:`encode_batches`.
    score : ``score(model, normed, batch)`` maps the final normed hidden states (row, pos,
        hidden) of a batch to one row per item. A score with a ``reference`` keyword also
        gets, when reusing, the batch's :class:`BaselineOf`.
    reuse : run the layers below each condition's first ablated layer once per batch, and
        let the score reuse the baseline's values where a condition changed nothing (see the
        module docstring); False runs the whole model per condition. Same numbers.
    seed : random controls use ``seed`` + batch index, so every batch draws afresh and both
        modes draw alike.
    """
    moe_layers = find_moe_layers(model, family_of(model.config))
    starts = {c: start_layer(c, moe_layers) for c in conditions}
    used_starts = {s for s in starts.values() if s is not None}
    held = {c: _later_layers(c, moe_layers) for c in conditions if c.hold_later}
    device = next(model.parameters()).device
    with_reference = reuse and _takes_reference(score)
    frames = []
    bar = tqdm(total=len(batches) * len(conditions), desc="ablation grid", unit="run", disable=not progress)
    for index, batch in enumerate(batches):
        inputs = dict(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), use_cache=False
        )
        with torch.inference_mode():
            # the baseline's routes, recorded where some condition holds later layers at them
            recorder = RouteRecorder(model) if held else contextlib.nullcontext()
            if reuse:
                kept = _KeptOutputs(model, {start - 1 for start in used_starts if start > 0})
                try:
                    with recorder:
                        baseline = base_model(model)(**inputs).last_hidden_state
                finally:
                    kept.remove()
                reference = BaselineOf(baseline)
            elif held:
                with recorder:
                    base_model(model)(**inputs)
            for condition in conditions:
                if condition.is_baseline:
                    normed = baseline if reuse else base_model(model)(**inputs).last_hidden_state
                else:
                    start = starts[condition]
                    skip = (
                        _layers_below_replaced(model, start, kept.outputs[start - 1])
                        if reuse and start > 0
                        else contextlib.nullcontext()
                    )
                    hold = (hold_routes(model, {layer: recorder.routes[layer] for layer in held[condition]})
                            if condition in held else contextlib.nullcontext())
                    with ablate(model, **condition.ablate_kwargs(), seed=seed + index) as ablation, skip, hold:
                        normed = base_model(model)(**inputs).last_hidden_state
                    _check_fired(ablation, condition)
                rows = (score(model, normed, batch, reference=reference) if with_reference
                        else score(model, normed, batch))
                frames.append(rows.assign(**condition.columns()))
                bar.update()
    bar.close()
    table = pd.concat(frames, ignore_index=True)
    first = list(Condition().columns())
    return table[first + [c for c in table.columns if c not in first]]


# -- scoring ------------------------------------------------------------------------------
def letter_token_ids(tokenizer, context: str = "Answer:", letters: str = LETTERS, separator: str = " ") -> list[int]:
    """Return the token id each answer letter gets when it follows ``context`` after
    ``separator`` (" A" after "Answer:"; "A" right after a chat template's assistant turn).

    Found by tokenizing ``context`` with and without the letter: the letter must add one
    token and leave the context's tokens alone, or scoring it at one position is wrong.
    """
    before = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = []
    for letter in letters:
        after = tokenizer(f"{context}{separator}{letter}", add_special_tokens=False)["input_ids"]
        if len(after) != len(before) + 1 or after[: len(before)] != before:
            pieces = tokenizer.convert_ids_to_tokens(after[len(before) - 1 :])
            raise ValueError(
                f"answer letter {separator + letter!r} after {context[-40:]!r} is not one token of its own for this "
                f"tokenizer (it ends as {pieces}); multiple-choice scoring needs single-token letters"
            )
        ids.append(after[-1])
    return ids


def answer_letter_ids(tokenizer, prompts: Sequence[str]) -> list[int]:
    """Return the letters' token ids where ``prompts`` end: " A" ... after a plain prompt's
    "Answer:", "A" ... straight after a chat prompt (the assistant's turn, which the chat
    template opens; the model answers with the letter itself)."""
    if all(p.rstrip(" ").endswith("Answer:") for p in prompts):
        return letter_token_ids(tokenizer)
    return letter_token_ids(tokenizer, context=prompts[0], separator="")


def letter_scorer(letter_ids: Sequence[int], answers: Sequence[int]):
    """Return a ``score`` for :func:`run_grid`: the letters' log-probabilities at the last token.

    Rows: ``item``, ``answer`` (0-3), ``pred`` (the letter with the highest log-probability;
    a tie goes to the first), ``correct``, and ``logprob_A`` ... (natural log, over the
    whole vocabulary).
    """
    letter_ids = torch.as_tensor(list(letter_ids))
    answers = np.asarray(answers)

    def score(model, normed, batch):
        rows = torch.arange(normed.shape[0], device=normed.device)
        last = torch.as_tensor(batch["lengths"] - 1, device=normed.device)
        logprobs = unembed(model, normed[rows, last]).log_softmax(dim=-1)
        letters = logprobs[:, letter_ids.to(normed.device)].detach().cpu().numpy()
        pred = letters.argmax(axis=1)
        answer = answers[batch["item"]]
        table = pd.DataFrame({"item": batch["item"], "answer": answer, "pred": pred, "correct": pred == answer})
        for j in range(letters.shape[1]):
            table[f"logprob_{LETTERS[j]}"] = letters[:, j]
        return table

    return score


def next_token_score(model, normed, batch, reference: BaselineOf | None = None) -> pd.DataFrame:
    """A ``score`` for :func:`run_grid`: per text, ``nll_sum`` (nats) over ``n_predicted`` tokens.

    With ``reference``, only the positions whose hidden state differs from the baseline's
    are unembedded; the others take the baseline's loss (the same input gives the same loss).
    """
    input_ids = batch["input_ids"].to(normed.device)
    lengths = torch.as_tensor(batch["lengths"], device=normed.device)
    predicting = torch.arange(normed.shape[1] - 1, device=normed.device)[None, :] < lengths[:, None] - 1
    if reference is None:
        nll = _next_token_losses(model, normed, input_ids, predicting)
    else:
        if "nll" not in reference.memo:
            reference.memo["nll"] = _next_token_losses(model, reference.normed, input_ids, predicting)
        nll, where = reference.memo["nll"].clone(), predicting & reference.changed(normed)[:, :-1]
        nll[where] = _cross_entropy(model, normed[:, :-1][where], input_ids[:, 1:][where])
    return pd.DataFrame(
        {
            "item": batch["item"],
            "nll_sum": nll.sum(dim=1).detach().cpu().numpy(),
            "n_predicted": batch["lengths"] - 1,
        }
    )


def _next_token_losses(model, normed, input_ids, predicting) -> torch.Tensor:
    """Return (row, pos) the loss of predicting token pos + 1 from position pos, 0 where
    ``predicting`` is False (padding, a text's last token)."""
    nll = torch.zeros(predicting.shape, device=normed.device)
    nll[predicting] = _cross_entropy(model, normed[:, :-1][predicting], input_ids[:, 1:][predicting])
    return nll


def _cross_entropy(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return each (hidden, target) pair's loss in nats, unembedding a block of positions at a
    time: about 16 M logits, as a whole batch's over a large vocabulary would not fit."""
    block = max(1, 2**24 // model.get_output_embeddings().weight.shape[0])
    parts = [torch.nn.functional.cross_entropy(unembed(model, hidden[i:i + block]), targets[i:i + block],
                                               reduction="none")
             for i in range(0, hidden.shape[0], block)]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def score_multiple_choice(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[int],
    conditions: Sequence[Condition],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    **grid_kwargs,
) -> pd.DataFrame:
    """Return per prompt and condition which letter the model prefers (see :func:`letter_scorer`).

    ``prompts`` end where the answer letter comes ("...Answer:", or a chat template's
    assistant turn: see :func:`answer_letter_ids`); ``answers`` are 0-3.
    Prompts longer than ``max_length`` tokens lose their beginning, never their question.
    Other keyword arguments go to :func:`run_grid`.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    bad = [a for a in answers if a not in range(len(LETTERS))]
    if bad:
        raise ValueError(f"answers must be 0-{len(LETTERS) - 1}; found {bad[0]!r}")
    batches = encode_batches(tokenizer, prompts, batch_size=batch_size, max_length=max_length, keep="end")
    return run_grid(model, batches, conditions, letter_scorer(answer_letter_ids(tokenizer, prompts), answers),
                    **grid_kwargs)


def heldout_loss(
    model,
    tokenizer,
    texts: Sequence[str],
    conditions: Sequence[Condition],
    *,
    batch_size: int = 8,
    max_length: int = 256,
    **grid_kwargs,
) -> pd.DataFrame:
    """Return per text and condition the next-token loss (``nll_sum`` over ``n_predicted``).

    Texts keep their first ``max_length`` tokens. Other keyword arguments go to :func:`run_grid`.
    """
    batches = encode_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length)
    return run_grid(model, batches, conditions, next_token_score, **grid_kwargs)


# -- summaries with bootstrap intervals ---------------------------------------------------
def bootstrap_summary(
    results: pd.DataFrame,
    numerator: str,
    denominator: str | None = None,
    by: Sequence[str] = (),
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Return per condition (and ``by`` group) sum(numerator)/sum(denominator) with intervals.

    Items (``item``) are resampled with replacement, the same resamples for every condition
    of a group, so ``delta`` (condition minus baseline) gets a paired interval.

    Returns
    -------
    pandas.DataFrame
        ``by`` columns, the condition columns, ``n_items``, ``value``, ``lo``, ``hi``,
        ``delta``, ``delta_lo``, ``delta_hi`` and ``delta_p``, the two-sided bootstrap p-value
        of the paired difference (twice the smaller share of resamples on either side of 0,
        at least 1/n_boot; NaN where there is no baseline). Correct it for the number of
        conditions read together with :func:`holm`.
    """
    by = list(by)
    alpha = (1 - level) / 2
    # tables cached before ``experts`` and ``reroute`` existed lack those columns, and the
    # ``weight_matched`` and ``hold_later`` columns exist only where a condition uses them
    condition_columns = [c for c in ["condition", *(f.name for f in fields(Condition))] if c in results.columns]
    described = results[condition_columns].drop_duplicates("condition")
    frames = []
    for key, group in results.groupby(by, sort=True) if by else [((), results)]:
        num = group.pivot(index="item", columns="condition", values=numerator).astype(float)
        den = (
            group.pivot(index="item", columns="condition", values=denominator).astype(float)
            if denominator
            else pd.DataFrame(1.0, index=num.index, columns=num.columns)
        )
        if num.isna().any().any():
            missing = num.columns[num.isna().any()].tolist()
            raise ValueError(f"group {key}: conditions {missing} lack some items; every condition needs every item")
        rng = np.random.default_rng(seed)
        n_items = len(num)
        # (boot, item) resample counts: a matrix product then gives every condition's sums
        counts = np.stack([np.bincount(rng.integers(0, n_items, n_items), minlength=n_items) for _ in range(n_boot)])
        boot = (counts @ num.to_numpy()) / (counts @ den.to_numpy())  # (boot, condition)
        value = num.sum() / den.sum()
        table = pd.DataFrame(
            {
                "condition": num.columns,
                "n_items": n_items,
                "value": value.to_numpy(),
                "lo": np.quantile(boot, alpha, axis=0),
                "hi": np.quantile(boot, 1 - alpha, axis=0),
            }
        )
        if BASELINE in num.columns:
            base = num.columns.get_loc(BASELINE)
            paired = boot - boot[:, [base]]
            table["delta"] = table["value"] - value[BASELINE]
            table["delta_lo"] = np.quantile(paired, alpha, axis=0)
            table["delta_hi"] = np.quantile(paired, 1 - alpha, axis=0)
            sides = np.minimum((paired <= 0).mean(0), (paired >= 0).mean(0))
            table["delta_p"] = np.clip(2 * sides, 1 / n_boot, 1.0)
            table.loc[table["condition"] == BASELINE, "delta_p"] = np.nan
        else:
            table[["delta", "delta_lo", "delta_hi", "delta_p"]] = np.nan
        for column, part in zip(by, key if isinstance(key, tuple) else (key,)):
            table.insert(0, column, part)
        frames.append(table)
    order = {name: i for i, name in enumerate(described["condition"])}
    summary = pd.concat(frames, ignore_index=True).merge(described, on="condition")
    summary = summary.sort_values([*by, "condition"], key=lambda s: s.map(order) if s.name == "condition" else s)
    rest = [c for c in summary.columns if c not in condition_columns + by]
    return summary[[*by, *condition_columns, *rest]].reset_index(drop=True)


def cached_results(name: str) -> pd.DataFrame:
    """Return every cached table called ``name`` (e.g. ``"ablation-mmlu"``), concatenated.

    Each table carries its ``model`` column; a ``cache_key`` column tells runs apart (e.g.
    the same model on two grids). Empty (no columns) when nothing is cached. Reads the
    cache folder of :func:`moe_lib.core.cache.cache_dir`.
    """
    import json

    import zarr

    from moe_lib.core.cache import cached_table, list_stores

    stores = list_stores()
    frames = []
    for path, key in stores.loc[stores["name"] == name, ["path", "key"]].itertuples(index=False):
        identity = json.loads(zarr.open_group(path, mode="r").attrs["cache_identity"])

        def missing(path=path):
            raise FileNotFoundError(f"{path}: listed in the cache but not readable as {name!r}")

        frames.append(cached_table(name, identity, missing).assign(cache_key=key))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def holm(p_values) -> np.ndarray:
    """Return Holm's step-down adjusted p-values (family-wise error), NaN kept in place.

    The i-th smallest of m p-values is multiplied by m - i (i from 0), the running maximum
    taken so that the order is kept, and capped at 1 (Holm 1979).
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def summarize_accuracy(results: pd.DataFrame, by: Sequence[str] = (), **kwargs) -> pd.DataFrame:
    """Return accuracy per condition (and ``by``: ``"subject"`` or ``"domain"``) with intervals.

    Columns as :func:`bootstrap_summary`, ``value`` renamed ``accuracy``, plus ``chance`` (0.25).
    """
    summary = bootstrap_summary(results, "correct", None, by, **kwargs).rename(columns={"value": "accuracy"})
    return summary.assign(chance=CHANCE)


def summarize_loss(results: pd.DataFrame, by: Sequence[str] = ("domain",), **kwargs) -> pd.DataFrame:
    """Return next-token loss (nats per token, pooled over texts) per condition and ``by``.

    Columns as :func:`bootstrap_summary`, ``value`` renamed ``loss``.
    """
    return bootstrap_summary(results, "nll_sum", "n_predicted", by, **kwargs).rename(columns={"value": "loss"})
