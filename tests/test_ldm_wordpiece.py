"""The LDM's WordPiece tokenizer (ldm/wordpiece.py) against transformers' BertTokenizer.

The vocabulary and the corpus are built here to reach every rule: accents, CJK, punctuation runs,
control characters, words over 100 characters, words no piece covers, special tokens written in
the prompt, empty prompts and prompts over 77 tokens. transformers 5's BertTokenizer takes the
vocabulary as a dict (`vocab=`); its `vocab_file` keyword is silently ignored (CONVENTIONS).
"""
import warnings

import pytest
import torch

from ldm.wordpiece import WordPieceTokenizer, read_vocabulary

WORDS = ["a", "an", "the", "photo", "of", "cat", "dog", "red", "ball", "cafe", "naive", "resume", "un", "play",
         "painting", "virus", "monster", "guitar", "pink", "yarn", "stone", "hello", "world", "new", "york"]
PIECES = ["##s", "##ing", "##ed", "##able", "##believ", "##e", "##ly", "##er", "##y", "##n"]
CJK = ["猫", "狗", "中", "国", "東", "京"]


def build_vocabulary() -> list[str]:
    """bert-base-uncased's shape in miniature: specials, single characters and their ## forms, words, pieces."""
    tokens = ["[PAD]", *[f"[unused{i}]" for i in range(5)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    characters = [chr(c) for c in range(33, 127) if not chr(c).isupper()] + ["é", "ß", "¿", "—", "“", "”", "…"]
    tokens += characters + ["##" + c for c in characters if c.isalnum()] + CJK + WORDS + PIECES
    return list(dict.fromkeys(tokens))


CORPUS = [
    "", " ", "a photo of a cat", "A Photo OF a CAT", "Café naïve résumé", "ÀÉÎÕÜ çñ", "Straße",
    "unbelievable!!! cats, dogs... and?!?", "'quoted' \"double\" (parens) [brackets] {braces}",
    "a$b+c^d`e|f~g<h>i=j", "猫と狗 中国 東京タワー", "中国中国abc東", "한국어 テスト",
    "tab\there\nnewline\rreturn", "ctrl\x00null\x07bell\x1bescape\ufffdreplacement\u200bzero-width",
    "non\u00a0breaking\u2003em\u2028line", "x" * 101, "a" + "b" * 99, "y" * 100, "emoji 🐱 and ω greek",
    "—dashes— “smart quotes” … ¿qué?", "[MASK] is a [CLS] token [SEP] here [UNK] and [PAD]", "[mask] lower",
    "e\u0301 combining accent", "İstanbul ǅ ﬁ ligature", "1234 56.78 9,000", "   leading and trailing   ",
    "a painting of a virus monster playing guitar", "a pink yarn ball", "a stone",
    " ".join(["cat"] * 80), " ".join(["unbelievable"] * 30), "!" * 90, "中" * 76, "中" * 75,
]


@pytest.fixture(scope="module")
def vocabulary_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(build_vocabulary()) + "\n", encoding="utf-8")
    return path


def test_wordpiece_frames_cls_prompt_sep_and_pads_with_0(vocabulary_file):
    tokenizer = WordPieceTokenizer(vocabulary_file)
    vocabulary = read_vocabulary(vocabulary_file)
    ids = tokenizer(["a cats", ""])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[0, :5].tolist() == [vocabulary["[CLS]"], vocabulary["a"], vocabulary["cat"], vocabulary["##s"],
                                   vocabulary["[SEP]"]]
    assert ids[0, 5:].eq(0).all() and ids[1, :2].tolist() == [vocabulary["[CLS]"], vocabulary["[SEP]"]]


def test_wordpiece_long_word_and_uncoverable_word_are_unk(vocabulary_file):
    tokenizer = WordPieceTokenizer(vocabulary_file)
    unk = tokenizer.unk_id
    assert tokenizer.encode("x" * 101) == [unk]
    assert tokenizer.encode("x" * 100) == [tokenizer.vocabulary["x"]] + [tokenizer.vocabulary["##x"]] * 99
    assert tokenizer.encode("cat🐱") == [unk]                 # one word: no piece covers 🐱, the whole word is [UNK]


def test_wordpiece_truncation_keeps_sep_last_and_warns(vocabulary_file):
    tokenizer = WordPieceTokenizer(vocabulary_file)
    with pytest.warns(UserWarning, match="cut after token 75"):
        ids = tokenizer(" ".join(["cat"] * 80))
    assert ids[0, -1] == tokenizer.sep_id and ids[0, 1:-1].eq(tokenizer.vocabulary["cat"]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer("中" * 75)                                   # 75 tokens fit exactly: no warning


def test_wordpiece_vocabulary_without_special_tokens_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\") + ".*lacks"):
        WordPieceTokenizer(path)


@pytest.mark.reference
def test_wordpiece_ids_equal_transformers_bert_tokenizer_zero_mismatches(vocabulary_file):
    from transformers import BertTokenizer

    reference = BertTokenizer(vocab=read_vocabulary(vocabulary_file), do_lower_case=True)
    ours = WordPieceTokenizer(vocabulary_file)
    expected = torch.tensor(reference(CORPUS, padding="max_length", max_length=77, truncation=True)["input_ids"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        actual = ours(CORPUS)
    mismatches = [(prompt[:30], a[a != e].tolist()[:5], e[a != e].tolist()[:5])
                  for prompt, a, e in zip(CORPUS, actual, expected, strict=True) if not torch.equal(a, e)]
    print(f"WordPiece vs transformers BertTokenizer: {len(mismatches)} mismatching prompts of {len(CORPUS)}, "
          f"{int((actual != expected).sum())} mismatching ids")
    assert not mismatches
    assert (actual == ours.unk_id).any() and (actual[:, 1:] == 0).any()   # the corpus reaches [UNK] and padding
