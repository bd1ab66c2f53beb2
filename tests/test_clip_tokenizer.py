"""clip.Tokenizer against golden ids from transformers' CLIPTokenizer (SD 1) and open_clip (SD 2).

The corpus and the reference ids live in tests/golden/data/clip_tokens.safetensors.
tests/golden/fixtures_clip.py says how they were made.

The SD 1 references need care. The SD 1 stack tokenised with transformers' *slow*
CLIPTokenizer, with ftfy installed. That tokenizer ran `ftfy.fix_text` first, and so it
decoded HTML entities, straightened curly quotes, fixed mojibake and full-width forms.
transformers 5 has only the Rust-backed CLIPTokenizer, which normalises with NFC alone.
We follow the original SD 1 behaviour. The golden test therefore checks both:
- ours == transformers 5 on every prompt that ftfy leaves alone;
- ours == transformers 5 applied to ftfy.fix_text(prompt) on every prompt.
The prompts where the two references disagree are listed below, each with its reason,
and a test checks that the list is exactly the set where they disagree.
"""
import hashlib
import json
import warnings

import pytest
import torch
from fakes import clip_vocab_files
from helpers import load_golden

from clip import Tokenizer
from clip.tokenizer import BOS_ID, EOS_ID

# sha256 of the published tokenizer/vocab.json and tokenizer/merges.txt that SD 1 folders carry
# (runwayml/stable-diffusion-v1-5, a copy of openai/clip-vit-large-patch14's; see fixtures_clip.py).
PUBLISHED_VOCAB_JSON_SHA256 = "f3494b2b345fa180ca51ec80ab47d1bbb0218d60089264d5ee9bb0619af4a4b7"
PUBLISHED_MERGES_TXT_SHA256 = "9fd691f7c8039210e0fced15865466c65820d09b63988b0174bfe25de299051a"

# Prompts on which transformers 5's CLIPTokenizer differs from the SD 1 stack. All but the last
# differ because ftfy.fix_text changes them; SD 1 style follows the SD 1 stack.
FTFY_CHANGES = {
    "don’t stop ‘curly’ “double”": "ftfy straightens curly quotes, so “don’t” splits as don + 't",
    "İstanbul ǅ": "ftfy splits the Latin ligature 'ǅ' into 'Dž'",
    "fish &amp; chips": "ftfy decodes HTML entities",
    "&lt;b&gt;bold&lt;/b&gt;": "ftfy decodes HTML entities",
    "caf&eacute; &copy; 2023": "ftfy decodes HTML entities",
    "&#39;quoted&#39; &#x263A;": "ftfy decodes numeric HTML entities",
    "&amp;amp; twice escaped": "ftfy decodes HTML entities until none is left",
    "cafÃ© mojibake": "ftfy repairs UTF-8 read as Latin-1",
    "ＡＢＣ１２３ full width": "ftfy turns full-width forms into ASCII",
    "ﬁne ﬂour ligatures": "ftfy splits typographic ligatures",
    "a\x00b\x07c control": "ftfy drops control characters",
    "\x1b[31mred\x1b[0m text": "ftfy drops terminal escape sequences",
}
# The slow tokenizer lower-cased the text and only then matched the special tokens, so it read
# "<|ENDOFTEXT|>" as EOS. transformers 5 matches special tokens only as typed.
SPECIAL_IN_CAPITALS = "<|ENDOFTEXT|> in capitals"


@pytest.fixture(scope="module")
def golden():
    return load_golden("clip_tokens")


@pytest.fixture(scope="module")
def sd1():
    return Tokenizer("sd1")


@pytest.fixture(scope="module")
def sd2():
    return Tokenizer("sd2")


def mismatches(tokenizer, prompts, expected_ids, skip=()):
    """The prompts (with both id rows) where tokenizer(prompt) differs from the reference row."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the long prompts warn; that is tested on its own
        ours = tokenizer(prompts)
    return [(p, a.tolist(), b.tolist()) for p, a, b in zip(prompts, ours, expected_ids, strict=True)
            if p not in skip and not torch.equal(a, b)]


def test_sd2_token_ids_match_open_clip_on_the_whole_corpus(golden, sd2):
    assert golden["sd2_ids_open_clip"].shape == (len(golden["prompts"]), 77)
    assert mismatches(sd2, golden["prompts"], golden["sd2_ids_open_clip"]) == []


def test_sd1_token_ids_match_transformers_on_every_prompt_that_ftfy_leaves_alone(golden, sd1):
    differing = set(FTFY_CHANGES) | {SPECIAL_IN_CAPITALS}
    assert mismatches(sd1, golden["prompts"], golden["sd1_ids_transformers_raw"], skip=differing) == []
    assert len(golden["prompts"]) - len(differing) >= 50


def test_sd1_token_ids_match_transformers_after_ftfy_like_the_sd1_stack(golden, sd1):
    assert mismatches(sd1, golden["prompts"], golden["sd1_ids_transformers_ftfy"], skip={SPECIAL_IN_CAPITALS}) == []


def test_listed_reference_differences_are_exactly_the_prompts_ftfy_changes(golden):
    """The list above is complete and every entry is real: the reference differs from itself there."""
    raw, fixed = golden["sd1_ids_transformers_raw"], golden["sd1_ids_transformers_ftfy"]
    changed = {p for p, a, b in zip(golden["prompts"], raw, fixed, strict=True) if not torch.equal(a, b)}
    assert changed == set(FTFY_CHANGES)


def test_sd1_decodes_html_entities_like_the_original_sd1_stack_not_like_transformers_5(golden, sd1):
    row = golden["prompts"].index("fish &amp; chips")
    ours = sd1(["fish &amp; chips"])[0]
    assert torch.equal(ours, sd1(["fish & chips"])[0])
    assert torch.equal(ours, golden["sd1_ids_transformers_ftfy"][row])
    assert not torch.equal(ours, golden["sd1_ids_transformers_raw"][row])   # transformers 5 keeps "&amp;"


def test_sd1_reads_special_tokens_after_lowercasing_like_the_slow_tokenizer(golden, sd1):
    row = golden["prompts"].index(SPECIAL_IN_CAPITALS)
    ours = sd1([SPECIAL_IN_CAPITALS])[0]
    assert ours[:2].tolist() == [BOS_ID, EOS_ID]
    assert torch.equal(ours[2:], sd1(["in capitals"])[0][1:-1])
    assert golden["sd1_ids_transformers_raw"][row, 1] != EOS_ID             # transformers 5 spells it out


def test_special_tokens_are_spelled_per_style(sd1, sd2):
    assert sd1(["<|startoftext|> a <|endoftext|>"])[0, :5].tolist() == [BOS_ID, BOS_ID, 320, EOS_ID, EOS_ID]
    assert sd2(["<start_of_text> a <end_of_text>"])[0, :5].tolist() == [BOS_ID, BOS_ID, 320, EOS_ID, EOS_ID]
    assert EOS_ID not in sd1(["<end_of_text>"])[0, 1:-75].tolist()


def test_known_ids_of_a_simple_prompt(sd1, sd2):
    # a</w> = 320, photo</w> = 1125, of</w> = 539, cat</w> = 2368: ids that SD users see in every debug print
    for tokenizer in (sd1, sd2):
        assert tokenizer(["A photo of a CAT"])[0, :7].tolist() == [BOS_ID, 320, 1125, 539, 320, 2368, EOS_ID]


def test_bpe_marks_the_word_end_and_merges_by_rank(sd1):
    assert sd1.bpe("cat") == ("cat</w>",)
    assert sd1.bpe("cats") == ("cats</w>",)
    assert sd1.token_to_id["cat</w>"] != sd1.token_to_id["cat"]          # "cat" ending a word is another token
    # a made-up word falls apart into ranked pieces whose concatenation is the word
    pieces = sd1.bpe("blendedlatent")
    assert "".join(pieces) == "blendedlatent</w>" and len(pieces) > 1 and pieces[-1].endswith("</w>")
    assert all(p in sd1.token_to_id for p in pieces)


def test_sd1_pads_with_eos_and_sd2_pads_with_zero(sd1, sd2):
    assert (sd1.pad_id, sd2.pad_id) == (EOS_ID, 0)
    assert sd1(["a cat"])[0].tolist() == [BOS_ID, 320, 2368] + [EOS_ID] * 74
    assert sd2(["a cat"])[0].tolist() == [BOS_ID, 320, 2368, EOS_ID] + [0] * 73


def test_empty_prompt_is_bos_eos_then_padding(sd1, sd2):
    assert sd1([""])[0].tolist() == [BOS_ID] + [EOS_ID] * 76
    assert sd2([""])[0].tolist() == [BOS_ID, EOS_ID] + [0] * 75


def test_batch_shape_and_dtype(sd1):
    ids = sd1(["a", "b c", ""])
    assert ids.shape == (3, 77) and ids.dtype == torch.long
    assert torch.equal(sd1("a")[0], ids[0])                   # a single string is a batch of one


@pytest.mark.parametrize("style", ["sd1", "sd2"])
def test_truncation_keeps_bos_75_tokens_eos_and_warns_how_many_were_dropped(style, sd1, sd2):
    tokenizer = {"sd1": sd1, "sd2": sd2}[style]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fits = tokenizer([" ".join(["cat"] * 75)])[0]            # exactly full: no warning
    assert fits.tolist() == [BOS_ID] + [2368] * 75 + [EOS_ID]
    with pytest.warns(UserWarning, match=r"dropped the last 1 token \('cat'\)"):
        one_over = tokenizer([" ".join(["cat"] * 76)])[0]
    assert torch.equal(one_over, fits)
    with pytest.warns(UserWarning, match=r"has 80 tokens .* dropped the last 5 tokens"):
        tokenizer([" ".join(["cat"] * 75 + ["dog"] * 5)])


def test_decode_matches_transformers_and_open_clip_on_the_corpus(golden, sd1, sd2):
    sd1_text = sd1.decode(golden["sd1_ids_transformers_ftfy"])
    assert [t for t, e in zip(sd1_text, golden["sd1_decoded_transformers"], strict=True) if t != e] == []
    sd2_text = sd2.decode(golden["sd2_ids_open_clip"])
    # open_clip leaves a trailing space after the last word end; transformers and we strip it
    assert [t for t, e in zip(sd2_text, golden["sd2_decoded_open_clip"], strict=True) if t != e.strip()] == []


def test_decode_returns_the_cleaned_text_and_can_keep_special_tokens(sd1, sd2):
    ids = sd1(["A  Café, 🐱 &amp; 2023!"])
    assert sd1.decode(ids) == ["a café , 🐱 & 2 0 2 3 !"]
    assert sd1.decode(ids[0, :4].tolist(), skip_special_tokens=False) == "<|startoftext|>a café ,"
    assert sd2.decode(sd2(["!!! a cat"])[0]) == "!!! a cat"                  # pad 0 is "!" and is not read


def write_published_vocab_files(folder):
    """vocab.json + merges.txt in the published format, derived from the vendored BPE file."""
    for name, content in clip_vocab_files().items():
        (folder / name).write_bytes(content)
    return folder / "vocab.json", folder / "merges.txt"


@pytest.mark.parametrize("style", ["sd1", "sd2"])
def test_vocab_json_and_merges_txt_pair_gives_the_same_tokenizer(style, tmp_path, golden, sd1, sd2):
    vocab_json, merges_txt = write_published_vocab_files(tmp_path)
    assert hashlib.sha256(vocab_json.read_bytes()).hexdigest() == PUBLISHED_VOCAB_JSON_SHA256
    assert hashlib.sha256(merges_txt.read_bytes()).hexdigest() == PUBLISHED_MERGES_TXT_SHA256
    from_files = Tokenizer.from_vocab_files(vocab_json, merges_txt, style=style)
    default = {"sd1": sd1, "sd2": sd2}[style]
    assert from_files.token_to_id == default.token_to_id and from_files.merge_ranks == default.merge_ranks
    assert from_files.pad_id == default.pad_id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(from_files(golden["prompts"]), default(golden["prompts"]))


def test_a_vocab_file_of_the_wrong_size_is_rejected_with_its_name(tmp_path):
    vocab_json, merges_txt = write_published_vocab_files(tmp_path)
    vocabulary = json.loads(vocab_json.read_text(encoding="utf-8"))
    del vocabulary["cat</w>"]
    vocab_json.write_text(json.dumps(vocabulary), encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.json.*expected 49408 vocabulary entries, found 49407"):
        Tokenizer.from_vocab_files(vocab_json, merges_txt)


def test_unknown_style_is_rejected():
    with pytest.raises(ValueError, match=r"unknown tokenizer style 'sd3'.*'sd1', 'sd2'"):
        Tokenizer("sd3")
