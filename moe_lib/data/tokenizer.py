"""The project's tokenizer: a byte-level BPE trained on the corpus's train split.

Byte-level, like GPT-2 and OLMoE's GPT-NeoX tokenizer, so any text (code, Chinese,
Spanish accents) encodes without unknown tokens and decodes back to the same bytes.
It is saved in the standard ``tokenizer.json`` form with its ``tokenizer_config.json``,
so ``transformers.AutoTokenizer.from_pretrained(folder)`` loads it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from moe_lib.data.corpus import replace_dir

# One token marks both ends of a document, as in GPT-2 and OLMoE ("<|endoftext|>");
# padding gets its own id so that a mask never confuses it with a real boundary.
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN]
DEFAULT_VOCAB_SIZE = 8192


def train_bpe(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE,
              min_frequency: int = 2, length: int | None = None) -> PreTrainedTokenizerFast:
    """Return a byte-level BPE tokenizer of ``vocab_size`` entries trained on ``texts``.

    The 256 byte symbols and the special tokens are part of the vocabulary, so every
    input is encodable. ``bos``, ``eos`` and ``unk`` are ``<|endoftext|>``; ``pad`` is
    ``<|padding|>``. Training is deterministic for a given text sequence.

    Parameters
    ----------
    texts
        Training documents, in a fixed order.
    vocab_size
        Total number of entries, special tokens included.
    min_frequency
        Pairs seen fewer times are never merged.
    length
        Number of texts, for the progress bar only.
    """
    model = Tokenizer(models.BPE())
    # add_prefix_space=False: a document's first word is not silently changed, and
    # decode(encode(text)) == text holds byte for byte.
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    model.train_from_iterator(texts, trainer=trainer, length=length)
    return wrap_tokenizer(model)


def wrap_tokenizer(model: Tokenizer) -> PreTrainedTokenizerFast:
    """Return ``model`` as a transformers fast tokenizer with the special tokens set."""
    return PreTrainedTokenizerFast(
        tokenizer_object=model,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        # Cleaning up spaces before punctuation would break the byte-exact round trip.
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out: Path) -> Path:
    """Save ``tokenizer`` to the folder ``out`` atomically and return ``out``.

    The files are written to ``<out>.partial`` and the folder is renamed when complete.
    """
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    tokenizer.save_pretrained(partial)
    replace_dir(partial, out)
    return out


def load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """Return the tokenizer saved in folder ``path``, or in a bare ``tokenizer.json`` file.

    A bare file (such as OLMoE's ``allenai_gpt-neox-olmo-dolma-v1_5.json``) gets the
    special tokens it defines; a folder carries its own ``tokenizer_config.json``.
    """
    path = Path(path)
    if path.is_dir():
        return PreTrainedTokenizerFast.from_pretrained(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer folder or tokenizer.json file")
    return PreTrainedTokenizerFast(tokenizer_file=str(path), clean_up_tokenization_spaces=False,
                                   model_max_length=1 << 20)


def count_tokens(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[int]:
    """Return the number of tokens of each text, without special tokens."""
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return [len(encoding.ids) for encoding in encodings]


def bytes_per_token(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> float:
    """Return UTF-8 bytes of ``texts`` per token (higher means a tighter encoding)."""
    n_bytes = sum(len(text.encode()) for text in texts)
    return n_bytes / sum(count_tokens(tokenizer, texts))
