"""The CLIP tokenizer: text -> (B, 77) token ids, and back.

CLIP reads text as a sequence of at most 77 integer ids taken from a vocabulary of
49408 entries. Getting from a prompt to those ids takes five steps.

1. **Cleaning.** Repair broken Unicode and HTML entities with `ftfy` (and, for SD 2,
   `html.unescape`), fold whitespace runs into single spaces and lower-case
   everything. The vocabulary has no capital letters.

2. **Pre-tokenisation.** A regular expression cuts the cleaned text into pieces,
   and BPE never merges across two pieces. A piece is one of:
   - a special token spelled out in the text;
   - one of the English contractions 's 't 're 've 'm 'll 'd;
   - a run of letters (`\\p{L}`, any script);
   - a single digit (`\\p{N}`), so "2023" becomes four pieces;
   - a run of anything else that is not a space (punctuation, emoji, combining marks).
   Spaces only separate pieces; they never appear in a token.

3. **Bytes as characters.** Each piece is encoded as UTF-8, and each byte is written
   as one printable character. The 188 printable Latin-1 bytes stand for
   themselves, and the other 68 bytes (controls, space, soft hyphen) take the
   characters 256, 257, ... in byte order. This way, any text, emoji included,
   is spelled with the same 256 base symbols, so no piece can be unknown.

4. **Byte-pair encoding.** A piece starts as a list of those symbols, and its last
   symbol carries the word-end marker `</w>`. So "cat" starts as `c a t</w>`, and
   "cat" at the end of a word is a different token from "cat" inside "cats". The
   merge list holds 48 894 symbol pairs, ranked in the order CLIP's BPE training
   learned them (at each training step, the most frequent pair). We then repeat
   one step: among the adjacent pairs of the piece, take the one that ranks best
   and fuse every occurrence of it, scanning left to right. We stop when no
   adjacent pair is in the list. Each final symbol is a
   vocabulary entry, and its position in the vocabulary is its id. Pieces recur
   (think "a" or "photo"), so the result is cached per piece.

5. **Framing.** Add BOS (49406) at the start and EOS (49407) at the end. Cut the
   prompt down to 75 tokens if needed, so that BOS + 75 + EOS fill the 77
   positions; a warning then says how many tokens were dropped. Fill the rest with
   the pad id.

The vocabulary is built from the merge list alone. It holds the 256 byte symbols,
then the same 256 symbols with `</w>`, then the result of each merge in rank order,
then `<|startoftext|>` and `<|endoftext|>`: 256 + 256 + 48 894 + 2 = 49 408 entries.
The published `tokenizer/vocab.json` + `merges.txt` of the diffusers model folders
hold the same tables, and `Tokenizer.from_vocab_files` reads them.

The two Stable Diffusion generations differ in three conventions: cleaning, pad id,
and how special tokens are spelled in a prompt. Each `style` follows the reference
its model was trained with (see clip/TOKENIZERS.md):

- sd1 follows transformers' CLIPTokenizer with ftfy, as the SD 1 stack ran it. It cleans
  with ftfy.fix_text, folds whitespace runs to " " and lower-cases. It pads with 49407
  (= EOS) and reads `<|startoftext|>` / `<|endoftext|>` in a prompt as BOS / EOS.
- sd2 follows open_clip.tokenize. It cleans with ftfy.fix_text, then html.unescape twice,
  folds whitespace and lower-cases. It pads with 0 (the "!" token) and reads
  `<start_of_text>` / `<end_of_text>` in a prompt as BOS / EOS.
"""
import gzip
import html
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import ftfy
import regex
import torch

CONTEXT_LENGTH = 77          # positions of CLIP's text transformer
BOS_ID = 49406               # <|startoftext|>
EOS_ID = 49407               # <|endoftext|>
VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2     # 48 894 merges make up the rest of the vocabulary
WORD_END = "</w>"
DEFAULT_BPE_FILE = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
_VOCAB_NAMES_OF_SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def byte_symbols() -> dict[int, str]:
    """The printable character that stands for each byte 0..255 (step 3 of the module docstring).

    Bytes that are already printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ')
    stand for themselves. The other 68 bytes take chr(256), chr(257), ... in byte order.
    The order of the returned dict (printable bytes first, then the rest) is the order
    of the first 256 vocabulary entries.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {byte: chr(byte) for byte in printable}
    others = [byte for byte in range(256) if byte not in symbols]
    symbols.update({byte: chr(256 + n) for n, byte in enumerate(others)})
    return symbols


def read_bpe_merges(path: str | Path = DEFAULT_BPE_FILE) -> list[tuple[str, str]]:
    """The ranked merges of CLIP's `bpe_simple_vocab_16e6.txt.gz`.

    The first line of the file is a version header. CLIP uses only the first
    48 894 of the following lines, each of which is "left right".
    """
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + NUM_MERGES]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: expected a header line and at least {NUM_MERGES} 'left right' lines")
    return merges


def vocabulary_from_merges(merges: Sequence[tuple[str, str]]) -> list[str]:
    """The token of each id: the byte symbols, the same symbols with </w>, each merge's result, BOS, EOS."""
    base = list(byte_symbols().values())
    return base + [s + WORD_END for s in base] + ["".join(m) for m in merges] + list(_VOCAB_NAMES_OF_SPECIALS)


# ----------------------------------------------------------------------------- cleaning
# Both references use `ftfy.fix_text` with its default settings. These repair mojibake,
# unescape HTML entities (but not in a line that contains "<"), NFC-normalise, straighten
# curly quotes, turn full-width forms into ASCII, split ligatures and drop control
# characters. Results can change with the ftfy version; these were checked with ftfy 6.3.

_WHITESPACE_RUN = regex.compile(r"\s+")


def clean_sd1(text: str) -> str:
    """SD 1: transformers' CLIPTokenizer with ftfy installed (as the SD 1 stack ran it).

    The steps are ftfy.fix_text, whitespace runs -> " ", strip, lower-case.
    """
    return _WHITESPACE_RUN.sub(" ", ftfy.fix_text(text)).strip().lower()


def clean_sd2(text: str) -> str:
    """SD 2: open_clip's tokenize (clean="lower").

    The steps are ftfy.fix_text, then html.unescape twice, which also unescapes
    lines that contain "<" and entities escaped twice ("&amp;amp;"), then strip,
    whitespace runs -> " " and lower-case.
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


@dataclass(frozen=True)
class TokenizerStyle:
    """The per-model conventions. Everything else is common to both styles."""
    name: str
    reference: str
    pad_id: int
    special_text: tuple[str, str]    # how BOS and EOS are spelled when a prompt contains them
    clean: Callable[[str], str]


STYLES = {
    "sd1": TokenizerStyle("sd1", "transformers CLIPTokenizer + ftfy (SD 1.x pipelines)", pad_id=EOS_ID,
                          special_text=("<|startoftext|>", "<|endoftext|>"), clean=clean_sd1),
    "sd2": TokenizerStyle("sd2", "open_clip.tokenize (SD 2.x)", pad_id=0,
                          special_text=("<start_of_text>", "<end_of_text>"), clean=clean_sd2),
}


class Tokenizer:
    """CLIP's byte-level BPE tokenizer, in the conventions of SD 1 (`style="sd1"`) or SD 2 (`"sd2"`).

    >>> Tokenizer("sd1")(["a photo of a cat"])[0, :7].tolist()
    [49406, 320, 1125, 539, 320, 2368, 49407]
    """

    def __init__(self, style: str = "sd1", bpe_file: str | Path = DEFAULT_BPE_FILE):
        """Build the tables from CLIP's merge list (by default the copy vendored in this package)."""
        merges = read_bpe_merges(bpe_file)
        vocabulary = vocabulary_from_merges(merges)
        self._setup(style, {token: i for i, token in enumerate(vocabulary)}, merges, source=str(bpe_file))

    @classmethod
    def from_vocab_files(cls, vocab_json: str | Path, merges_txt: str | Path, style: str = "sd1") -> "Tokenizer":
        """Build it from a diffusers/transformers `tokenizer/` folder's `vocab.json` + `merges.txt` pair.

        `vocab.json` maps each token to its id. `merges.txt` starts with a "#version" line,
        followed by one "left right" merge per line in rank order.
        """
        with open(vocab_json, encoding="utf-8") as f:
            vocabulary = json.load(f)
        with open(merges_txt, encoding="utf-8") as f:
            lines = f.read().split("\n")
        if lines[0].startswith("#version"):
            lines = lines[1:]
        merges = [tuple(line.split()) for line in lines if line]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{merges_txt}: expected {NUM_MERGES} 'left right' lines after the '#version' header, "
                             f"found {len(merges)} lines, {sum(len(m) != 2 for m in merges)} of them malformed")
        tokenizer = cls.__new__(cls)
        tokenizer._setup(style, vocabulary, merges, source=f"{vocab_json} + {merges_txt}")
        return tokenizer

    def _setup(self, style: str, vocabulary: dict[str, int], merges: Sequence[tuple[str, str]], source: str):
        if style not in STYLES:
            raise ValueError(f"unknown tokenizer style {style!r}; expected one of {sorted(STYLES)}")
        if len(vocabulary) != VOCAB_SIZE:
            raise ValueError(f"{source}: expected {VOCAB_SIZE} vocabulary entries, found {len(vocabulary)}")
        for name, expected in zip(_VOCAB_NAMES_OF_SPECIALS, (BOS_ID, EOS_ID), strict=True):
            if vocabulary.get(name) != expected:
                raise ValueError(f"{source}: expected {name} to have id {expected}, found {vocabulary.get(name)}")
        missing = [m for m in merges if "".join(m) not in vocabulary]
        if missing:
            raise ValueError(f"{source}: {len(missing)} merge results are not in the vocabulary, e.g. {missing[0]}")
        self.style = STYLES[style]
        self.token_to_id = dict(vocabulary)                                # token -> id
        self.id_to_token = {i: token for token, i in vocabulary.items()}   # id -> token
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_to_symbol = byte_symbols()
        self.symbol_to_byte = {s: b for b, s in self.byte_to_symbol.items()}
        self.special_ids = dict(zip(self.style.special_text, (BOS_ID, EOS_ID), strict=True))
        # Step 2: the special spellings, the contractions, letter runs, single digits, other non-space runs.
        specials = "|".join(regex.escape(s) for s in self.style.special_text)
        self.pattern = regex.compile(specials + r"|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
                                     regex.IGNORECASE)
        self.cache: dict[str, tuple[str, ...]] = {}

    # --------------------------------------------------------------------- conventions
    bos_id = BOS_ID
    eos_id = EOS_ID
    context_length = CONTEXT_LENGTH

    @property
    def pad_id(self) -> int:
        return self.style.pad_id

    def __repr__(self) -> str:
        return f"Tokenizer(style={self.style.name!r})  # {self.style.reference}, pads with {self.pad_id}"

    # --------------------------------------------------------------------- encoding
    def bpe(self, piece: str) -> tuple[str, ...]:
        """Step 4: the vocabulary tokens of one pre-token, given in byte symbols."""
        if piece in self.cache:
            return self.cache[piece]
        symbols = [*piece[:-1], piece[-1] + WORD_END]
        while len(symbols) > 1:
            pairs = list(zip(symbols, symbols[1:], strict=False))
            best = min(pairs, key=lambda pair: self.merge_ranks.get(pair, NUM_MERGES))
            if best not in self.merge_ranks:
                break                                   # no adjacent pair is mergeable
            merged, i = [], 0
            while i < len(symbols):                     # fuse every occurrence, left to right
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self.cache[piece] = tuple(symbols)
        return self.cache[piece]

    def encode(self, text: str) -> list[int]:
        """The ids of `text` without BOS, EOS, truncation or padding (steps 1-4)."""
        ids = []
        for piece in self.pattern.findall(self.style.clean(text)):
            if piece in self.special_ids:
                ids.append(self.special_ids[piece])
                continue
            symbols = "".join(self.byte_to_symbol[b] for b in piece.encode("utf-8"))
            ids.extend(self.token_to_id[token] for token in self.bpe(symbols))
        return ids

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """(B, 77) int64 ids: BOS, at most 75 prompt tokens, EOS, then the style's pad id (step 5)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        room = CONTEXT_LENGTH - 2
        batch = torch.full((len(prompts), CONTEXT_LENGTH), self.pad_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids = self.encode(prompt)
            if len(ids) > room:
                dropped = len(ids) - room
                warnings.warn(
                    f"prompt {row} has {len(ids)} tokens but CLIP holds {room} between BOS and EOS: "
                    f"dropped the last {dropped} token{'s' * (dropped != 1)} ({self.decode(ids[room:])!r})",
                    stacklevel=2)
                ids = ids[:room]
            framed = [BOS_ID, *ids, EOS_ID]
            batch[row, :len(framed)] = torch.tensor(framed, dtype=torch.long)
        return batch

    # --------------------------------------------------------------------- decoding
    def decode(self, ids, skip_special_tokens: bool = True):
        """Text back from ids: a str for one sequence, a list of str for a (B, L) tensor.

        With `skip_special_tokens`, everything after the last EOS is padding and is dropped,
        and so is every BOS and EOS (a prompt may spell them out). This works for both
        pad ids. The result is the *cleaned* text, with a space at every word end:
        "A cat, sitting." comes back as "a cat , sitting .".
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() == 2:
                return [self.decode(row, skip_special_tokens) for row in ids]
            ids = ids.tolist()
        ids = list(ids)
        if skip_special_tokens:
            if EOS_ID in ids:
                ids = ids[:len(ids) - ids[::-1].index(EOS_ID)]       # up to and with the last EOS
            ids = [i for i in ids if i not in (BOS_ID, EOS_ID)]
        # Every token, the special ones included, is spelled in byte symbols: map them back to bytes.
        symbols = "".join(self.id_to_token[i] for i in ids)
        text = bytes(self.symbol_to_byte[s] for s in symbols).decode("utf-8", errors="replace")
        return text.replace(WORD_END, " ").strip()
