"""Token ids equal open_clip's on real captions and on the inputs that trip tokenizers up."""

import csv

import open_clip
import pytest
import torch

from kubeclip import model
from kubeclip.model.tokenizer import ClipTokenizer, fit_merges, load_tokenizer

EDGE_CASES = [
    "",
    "   \t\n  ",
    "Tom &amp; Jerry &lt;3 &amp;amp; &quot;quoted&quot; &#39;s",
    "a cat 🐱 on a 🛹, with 👍🏽 and 🇫🇷",
    "Crème brûlée, naïve façade, Ångström, São Paulo, Ελληνικά, русский, 日本語の文章",
    "mojibake: Ã©tÃ© caf\u00c3\u00a9",
    "digits 0123456789 and 3.14159, 1,000,000 and 2021-03-04",
    "UPPER lower MiXeD case",
    "it's they're we've I'm you'll he'd",
    "control\x00chars\x07 and\u200bzero width",
    "<start_of_text> literal special tokens <end_of_text>",
    " ".join(f"word{i}" for i in range(500)),
    "a" * 2000,
]


@pytest.mark.parametrize("text", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_edge_cases_match_open_clip(text):
    assert torch.equal(model.tokenize([text]), open_clip.tokenize([text]))


def test_all_flickr8k_captions_match_open_clip(flickr8k):
    with open(flickr8k / "captions.tsv", newline="") as f:
        captions = [row["caption"] for row in csv.DictReader(f, delimiter="\t")]
    assert len(captions) == 40455
    assert torch.equal(model.tokenize(captions), open_clip.tokenize(captions))


def test_shape_padding_and_truncation_keep_the_end_token():
    tok = ClipTokenizer()
    ids = model.tokenize(["a dog", "word " * 200], context_length=16)
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    assert ids[0, 0] == tok.sot_token_id and ids[0, 3] == tok.eot_token_id and ids[0, 4:].eq(0).all()
    assert ids[1, -1] == tok.eot_token_id and ids[1].argmax() == 15  # text pools at the last position
    assert tok.vocab_size == 49408
    assert model.tokenize("one string").shape == (1, 77)


def test_decode_inverts_encode():
    tok = ClipTokenizer()
    assert tok.decode(tok.encode("A Photo of a CAT!")) == "a photo of a cat !"


def test_saved_tokenizer_gives_the_same_ids(tmp_path):
    ClipTokenizer().save(tmp_path / "tokenizer")
    loaded = load_tokenizer(tmp_path / "tokenizer")
    texts = ["a photo of a cat.", "naïve café"]
    assert torch.equal(loaded(texts), model.tokenize(texts))


def test_fitted_merges_make_frequent_words_tokens_and_spell_rare_ones_in_pieces(tmp_path):
    texts = ["A dog runs on the grass."] * 20 + ["Two dogs", "a doghouse"]
    merges = fit_merges(texts, 10_000)
    assert merges == fit_merges(texts, 10_000)  # the same texts, the same vocabulary
    assert 10 < len(merges) < 100  # it stops where the pairs left are each seen once
    tok = ClipTokenizer(merges=merges, context_length=16)
    assert tok.vocab_size == 2 * 256 + len(merges) + 2 and tok.eot_token_id == tok.vocab_size - 1
    spelt = lambda word: [tok.decoder[i] for i in tok.encode(word)]
    assert spelt("dog") == ["dog</w>"] and spelt("grass") == ["grass</w>"]
    assert spelt("dogs") == ["dog", "s</w>"]  # a word used once: in pieces that words used more often share
    assert len(spelt("zebra")) == 5  # never seen: one byte a symbol, still ids the model knows
    text = "A cat, naïve; 3 dogs 🐱"
    assert tok.decode(tok.encode(text)) == ClipTokenizer().decode(ClipTokenizer().encode(text))
    assert fit_merges(texts, 3) == merges[:3]

    tok.save(tmp_path / "tokenizer")
    loaded = load_tokenizer(tmp_path / "tokenizer")
    assert loaded.merges == merges and torch.equal(loaded(texts + [text]), tok(texts + [text]))
