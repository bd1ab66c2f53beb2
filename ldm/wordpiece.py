"""The tokenizer of CompVis's text-to-image LDM: bert-base-uncased's WordPiece (Wu et al. 2016, §4.1).

CompVis's `BERTTokenizer` calls transformers' `BertTokenizerFast.from_pretrained("bert-base-uncased")`
with `truncation=True, max_length=77, padding="max_length"`. The same ids, by these rules:

1. Special tokens written in the prompt ("[MASK]", "[SEP]", …) are kept whole.
2. Clean-up: NUL, U+FFFD and control characters (Unicode category C*, except tab, newline and
   carriage return) are removed; every whitespace character becomes a space.
3. CJK ideographs are split off as words of their own (spaces around each).
4. Accents are stripped (NFD, then the combining marks, category Mn, dropped), and the text lower-cased.
5. Words are split at whitespace, and every punctuation character (ASCII symbols and Unicode P*)
   is a word of its own.
6. WordPiece: each word is covered greedily by the longest vocabulary entry first, the pieces after
   the first written with "##"; a word that cannot be covered, or has over 100 characters, is [UNK].
7. The ids are framed as [CLS] … [SEP], cut to 77 keeping [SEP] last (with a warning), padded with [PAD] = 0.

The vocabulary is the model's `vocab.txt`: one token a line, the line number its id.
"""
import re
import unicodedata
import warnings
from pathlib import Path

import torch

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_WORD_CHARACTERS = 100
# CJK Unified Ideographs and their extensions and compatibility blocks (not Hangul, Hiragana or Katakana).
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def read_vocabulary(path: str | Path) -> dict[str, int]:
    """{token: id} of a WordPiece vocab.txt: one token a line, the line number (from 0) its id."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read a WordPiece vocabulary ({error}); expected a UTF-8 vocab.txt") \
            from None
    if lines and lines[-1] == "":
        lines.pop()
    vocabulary = {}
    for index, token in enumerate(lines):
        vocabulary.setdefault(token.rstrip("\r"), index)
    missing = [t for t in SPECIAL_TOKENS if t not in vocabulary]
    if missing:
        raise ValueError(f"{path}: a WordPiece vocabulary needs {', '.join(SPECIAL_TOKENS)}; it lacks "
                         f"{', '.join(missing)}. Use the model's tokenizer/vocab.txt (bert-base-uncased's)")
    return vocabulary


def is_control(character: str) -> bool:
    return character not in "\t\n\r" and unicodedata.category(character).startswith("C")


def is_punctuation(character: str) -> bool:
    """ASCII symbols (BERT counts $, +, ^, ` … as punctuation) and every Unicode P* character."""
    code = ord(character)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(character).startswith("P")


def is_cjk(character: str) -> bool:
    code = ord(character)
    return any(low <= code <= high for low, high in CJK_RANGES)


def normalize(text: str) -> str:
    """Rules 2–4: clean-up, CJK spacing, accent stripping and lower-casing."""
    text = "".join(c for c in text if not (c == "\0" or c == "\ufffd" or is_control(c)))
    text = "".join(" " if c.isspace() else f" {c} " if is_cjk(c) else c for c in text)
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return text.lower()


def split_words(text: str) -> list[str]:
    """Rule 5: whitespace-separated words, each punctuation character a word of its own."""
    words = []
    for chunk in text.split():
        word = ""
        for character in chunk:
            if is_punctuation(character):
                words += [word, character] if word else [character]
                word = ""
            else:
                word += character
        if word:
            words.append(word)
    return words


class WordPieceTokenizer:
    """prompts -> (B, 77) LongTensor of bert-base-uncased WordPiece ids (the rules of the module docstring)."""

    def __init__(self, vocabulary: dict[str, int] | str | Path, context_length: int = 77):
        self.vocabulary = read_vocabulary(vocabulary) if isinstance(vocabulary, (str, Path)) else dict(vocabulary)
        self.context_length = context_length
        self.cls_id, self.sep_id = self.vocabulary["[CLS]"], self.vocabulary["[SEP]"]
        self.pad_id, self.unk_id = self.vocabulary["[PAD]"], self.vocabulary["[UNK]"]
        self._special = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")

    def wordpiece(self, word: str) -> list[int]:
        """Rule 6: greedy longest-match-first, continuation pieces prefixed "##"; [UNK] if impossible."""
        if len(word) > MAX_WORD_CHARACTERS:
            return [self.unk_id]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocabulary:
                    pieces.append(self.vocabulary[piece])
                    start = end
                    break
            else:
                return [self.unk_id]
        return pieces

    def encode(self, text: str) -> list[int]:
        """The ids of `text` without the framing: rules 1–6."""
        ids = []
        for part in self._special.split(text):
            if part in SPECIAL_TOKENS:
                ids.append(self.vocabulary[part])
            elif part:
                for word in split_words(normalize(part)):
                    ids += self.wordpiece(word)
        return ids

    def __call__(self, prompts: list[str] | str) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        rows = []
        for prompt in prompts:
            ids = self.encode(prompt)
            room = self.context_length - 2
            if len(ids) > room:
                warnings.warn(f"the prompt {prompt[:40]!r}… has {len(ids)} WordPiece tokens; the LDM reads "
                              f"{room}, so it is cut after token {room}", stacklevel=2)
                ids = ids[:room]
            row = [self.cls_id, *ids, self.sep_id]
            rows.append(row + [self.pad_id] * (self.context_length - len(row)))
        return torch.tensor(rows, dtype=torch.long)                            # (B, 77)
