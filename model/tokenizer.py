"""CLIP's byte-level BPE tokenizer, producing the same ids as OpenAI's and open_clip's, and a Hugging Face
`tokenizer.json` tokenizer for pretrained text towers, with the same calls.

CLIP's merges are read from the installed open-clip-torch distribution (without importing it), or from a
checkpoint's `tokenizer/` folder, where `ClipTokenizer.save` writes them; `fit_merges` learns merges from
your own captions instead (`kubeclip train --fit-tokenizer`). This file is
copied as it is into the Triton repository's tokenizer model: torch is imported only where a tensor
is asked for, and the `tokenizers` library only by the Hugging Face tokenizer.
"""

from __future__ import annotations

import gzip
import html
import json
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import ftfy
import regex

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"  # CLIP's, as open-clip-torch ships it
MERGES_FILE = "bpe_merges.txt.gz"  # a saved tokenizer's merges, in the same format
CONFIG_FILE = "tokenizer_config.json"
HF_TOKENIZER_FILE = "tokenizer.json"
CONTEXT_LENGTH = 77
_MERGES = 49152 - 256 - 2  # merges used by CLIP: vocab 49,408 = 2 x 256 bytes + merges + 2 specials
_PRE_TOKENS = regex.compile(  # what BPE runs on: special tokens, contractions, letter runs, digits, other runs
    r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


def default_vocab_path() -> Path:
    try:
        path = Path(distribution("open-clip-torch").locate_file(f"open_clip/{VOCAB_FILE}"))
    except PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"CLIP's BPE vocabulary {VOCAB_FILE} ships in the open-clip-torch wheel: "
                                "pip install 'open-clip-torch>=3.3'")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """Printable stand-ins for all 256 bytes, so BPE never sees whitespace or control characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + len(cs) - 188)  # 188 bytes are printable as they are
    return dict(zip(bs, map(chr, cs)))


def clean(text: str) -> str:
    """OpenAI's cleaning: fix mojibake, unescape HTML twice, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


class ClipTokenizer:
    def __init__(self, vocab_path: str | Path | None = None, context_length: int = CONTEXT_LENGTH,
                 merges: list[tuple[str, str]] | None = None):
        """CLIP's vocabulary (the file at `vocab_path`, by default open_clip's), or `merges` learnt from other
        texts by `fit_merges`."""
        if merges is None:
            vocab_path = Path(vocab_path) if vocab_path else default_vocab_path()
            lines = gzip.open(vocab_path).read().decode("utf-8").splitlines()[1:_MERGES + 1]
            merges = [tuple(line.split()) for line in lines if line]
        self.merges = merges
        self.context_length = context_length
        self.byte_encoder = _bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<start_of_text>", "<end_of_text>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = vocab
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_token_id, self.eot_token_id = len(vocab) - 2, len(vocab) - 1
        self._word_ids = lru_cache(maxsize=1 << 18)(self._bpe_ids)

    @property
    def vocab_size(self) -> int:
        return len(self.decoder)

    def _bpe_ids(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-token: merge the lowest-ranked adjacent pair until none is in the merge table."""
        if word in ("<start_of_text>", "<end_of_text>"):
            return (self.encoder[word],)
        symbols = _symbols(word, self.byte_encoder)
        while len(symbols) > 1:
            ranks = [self.bpe_ranks.get(pair, len(self.merges)) for pair in zip(symbols, symbols[1:])]
            best = min(ranks)
            if best == len(self.merges):
                break
            symbols = _merge(symbols, self.merges[best])
        return tuple(self.encoder[s] for s in symbols)

    def encode(self, text: str) -> list[int]:
        """Ids of a text, without start and end tokens."""
        return [i for word in _PRE_TOKENS.findall(clean(text)) for i in self._word_ids(word)]

    def decode(self, ids: list[int]) -> str:
        ids = [i for i in ids if i not in (0, self.sot_token_id, self.eot_token_id)]
        text = "".join(self.decoder[i] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def padded_ids(self, texts: list[str], context_length: int | None = None) -> list[list[int]]:
        """Rows of `context_length` ids: start, text, end, zero padding; too-long texts are cut, keeping the end."""
        length = context_length or self.context_length
        rows = []
        for text in texts:
            ids = [self.sot_token_id, *self.encode(text)][: length - 1] + [self.eot_token_id]
            rows.append(ids + [0] * (length - len(ids)))
        return rows

    def __call__(self, texts: str | list[str], context_length: int | None = None):
        """Token ids, LongTensor `[N, context_length]`."""
        import torch

        texts = [texts] if isinstance(texts, str) else texts
        length = context_length or self.context_length
        return torch.tensor(self.padded_ids(texts, length), dtype=torch.long).view(len(texts), length)

    def save(self, directory: str | Path) -> None:
        """Write `tokenizer_config.json` and the merges in CLIP's format, so a checkpoint carries its tokenizer."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with gzip.open(directory / MERGES_FILE, "wt", encoding="utf-8", compresslevel=6) as f:
            f.write(f"#version: kubeclip {len(self.merges)} merges\n")
            f.writelines(f"{a} {b}\n" for a, b in self.merges)
        config = {"type": "clip_bpe", "vocab_file": MERGES_FILE, "context_length": self.context_length}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    def __reduce__(self):  # the BPE cache does not pickle
        return type(self), (None, self.context_length, self.merges)


def fit_merges(texts: Iterable[str], merges: int) -> list[tuple[str, str]]:
    """Up to `merges` BPE merges learnt from `texts` (Sennrich et al. 2016: merge the most frequent adjacent
    pair, again and again), over CLIP's cleaning, pre-tokens and byte symbols, so `ClipTokenizer` reads them
    as it reads CLIP's. On small data most of CLIP's 49,408 token rows are never trained and a rare word's own
    row only a few times; a vocabulary fitted to the captions spells rare words with pieces they use often."""
    counts = Counter(word for text in texts for word in _PRE_TOKENS.findall(clean(text)))
    byte_encoder = _bytes_to_unicode()
    words = [(_symbols(word, byte_encoder), n) for word, n in counts.items()]
    pairs: Counter = Counter()
    holders: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair -> the words it occurs in

    def count(i: int, sign: int) -> None:
        symbols, n = words[i]
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] += sign * n
            if sign > 0:
                holders[pair].add(i)
            elif pairs[pair] <= 0:
                del pairs[pair], holders[pair]

    for i in range(len(words)):
        count(i, 1)
    learnt = []
    while len(learnt) < merges and pairs:
        best = max(pairs, key=lambda pair: (pairs[pair], pair))  # the most frequent; ties broken by the pair
        if pairs[best] < 2:
            break  # a pair seen once names one word's spelling, not a piece
        learnt.append(best)
        for i in list(holders[best]):
            count(i, -1)
            words[i] = (_merge(words[i][0], best), words[i][1])
            count(i, 1)
    return learnt


def _symbols(word: str, byte_encoder: dict[int, str]) -> list[str]:
    """A pre-token as BPE starts it: one symbol per byte, the last marked as the word's end."""
    symbols = [byte_encoder[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    return symbols


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    merged, i = [], 0
    while i < len(symbols):
        if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


class HFTokenizer:
    """A Hugging Face fast tokenizer (`tokenizer.json`): its own normalisation, special tokens and vocabulary,
    right-padded with its pad id to `context_length`, too-long texts cut (the end token is kept)."""

    def __init__(self, tokenizer_file: str | Path, context_length: int = CONTEXT_LENGTH):
        from tokenizers import Tokenizer

        self.tokenizer_file = Path(tokenizer_file)
        self.context_length = context_length
        self.tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
        padding = self.tokenizer.padding or {}
        self.pad_token_id = padding.get("pad_id", self.tokenizer.token_to_id("[PAD]") or 0)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def padded_ids(self, texts: list[str], context_length: int | None = None) -> list[list[int]]:
        return self.padded_ids_and_mask(texts, context_length)[0]

    def padded_ids_and_mask(self, texts: list[str], context_length: int | None = None
                            ) -> tuple[list[list[int]], list[list[int]]]:
        """Rows of `context_length` ids and the attention mask (1 = token, 0 = padding), what the exported
        text tower takes as `input_ids` and `attention_mask`."""
        length = context_length or self.context_length
        self.tokenizer.enable_truncation(max_length=length)
        self.tokenizer.enable_padding(length=length, pad_id=self.pad_token_id, direction="right")
        encodings = self.tokenizer.encode_batch(list(texts))
        return [e.ids for e in encodings], [e.attention_mask for e in encodings]

    def __call__(self, texts: str | list[str], context_length: int | None = None):
        """Token ids, LongTensor `[N, context_length]`; the attention mask is `ids != pad_token_id`."""
        import torch

        texts = [texts] if isinstance(texts, str) else texts
        length = context_length or self.context_length
        return torch.tensor(self.padded_ids(texts, length), dtype=torch.long).view(len(texts), length)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i != self.pad_token_id])

    def save(self, directory: str | Path) -> None:
        """Write `tokenizer_config.json` (type "hf") and a copy of `tokenizer.json`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.tokenizer_file, directory / HF_TOKENIZER_FILE)
        config = {"type": "hf", "tokenizer_file": HF_TOKENIZER_FILE, "context_length": self.context_length,
                  "pad_token_id": self.pad_token_id}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    def __reduce__(self):
        return type(self), (self.tokenizer_file, self.context_length)


def load_tokenizer(directory: str | Path) -> ClipTokenizer | HFTokenizer:
    """The tokenizer saved in a checkpoint's `tokenizer/` folder."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    if config.get("type") == "hf":
        return HFTokenizer(directory / config["tokenizer_file"], config.get("context_length", CONTEXT_LENGTH))
    if config.get("type") != "clip_bpe":
        raise ValueError(f"{directory / CONFIG_FILE}: tokenizer type {config.get('type')!r} is not supported "
                         "(this kubeclip reads 'clip_bpe' and 'hf')")
    return ClipTokenizer(directory / config["vocab_file"], config.get("context_length", CONTEXT_LENGTH))


@lru_cache(maxsize=4)
def default_tokenizer(context_length: int = CONTEXT_LENGTH) -> ClipTokenizer:
    return ClipTokenizer(context_length=context_length)


def tokenize(texts: str | list[str], context_length: int = CONTEXT_LENGTH):
    """CLIP BPE ids `LongTensor[N, context_length]`, equal to open_clip's `tokenize`."""
    return default_tokenizer()(texts, context_length)
