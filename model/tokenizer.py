"""CLIP's byte-level BPE tokenizer, producing the same ids as OpenAI's and open_clip's, and a Hugging Face
`tokenizer.json` tokenizer for pretrained text towers, with the same calls.

The vocabulary file is read from the installed open-clip-torch distribution (without importing it),
or from a checkpoint's `tokenizer/` folder, where `ClipTokenizer.save` puts a copy. This file is
copied as it is into the Triton repository's tokenizer model: torch is imported only where a tensor
is asked for, and the `tokenizers` library only by the Hugging Face tokenizer.
"""

from __future__ import annotations

import gzip
import html
import json
import shutil
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import ftfy
import regex

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
CONFIG_FILE = "tokenizer_config.json"
HF_TOKENIZER_FILE = "tokenizer.json"
CONTEXT_LENGTH = 77
_MERGES = 49152 - 256 - 2  # merges used by CLIP: vocab 49,408 = 2 x 256 bytes + merges + 2 specials


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
    def __init__(self, vocab_path: str | Path | None = None, context_length: int = CONTEXT_LENGTH):
        self.vocab_path = Path(vocab_path) if vocab_path else default_vocab_path()
        self.context_length = context_length
        merges = gzip.open(self.vocab_path).read().decode("utf-8").split("\n")[1:_MERGES + 1]
        merges = [tuple(m.split()) for m in merges]
        self.byte_encoder = _bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<start_of_text>", "<end_of_text>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = vocab
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_token_id, self.eot_token_id = len(vocab) - 2, len(vocab) - 1
        self.pattern = regex.compile(
            r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)
        self._word_ids = lru_cache(maxsize=1 << 18)(self._bpe_ids)

    @property
    def vocab_size(self) -> int:
        return len(self.decoder)

    def _bpe_ids(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-token: merge the lowest-ranked adjacent pair until none is in the merge table."""
        if word in ("<start_of_text>", "<end_of_text>"):
            return (self.encoder[word],)
        symbols = [self.byte_encoder[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            ranks = [self.bpe_ranks.get(pair, _MERGES) for pair in zip(symbols, symbols[1:])]
            best = min(ranks)
            if best == _MERGES:
                break
            first, second = symbols[ranks.index(best)], symbols[ranks.index(best) + 1]
            merged, i = [], 0
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(self.encoder[s] for s in symbols)

    def encode(self, text: str) -> list[int]:
        """Ids of a text, without start and end tokens."""
        return [i for word in self.pattern.findall(clean(text)) for i in self._word_ids(word)]

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
        """Write `tokenizer_config.json` and a copy of the vocabulary, so a checkpoint carries its tokenizer."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.vocab_path, directory / VOCAB_FILE)
        config = {"type": "clip_bpe", "vocab_file": VOCAB_FILE, "context_length": self.context_length}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    def __reduce__(self):  # the BPE cache does not pickle; a copy re-reads the vocabulary
        return type(self), (self.vocab_path, self.context_length)


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
