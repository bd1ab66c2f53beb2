"""Golden fixtures of the clip package (`cd tests && python -m golden.make_fixtures --only clip`).

References and how they are reached here:

* **SD 1 tokenizer:** transformers' `CLIPTokenizer` (5.x, the Rust-backed one). The Hub
  cannot be reached here, so `_transformers_tokenizer` builds it with `from_pretrained`
  on a temporary folder that holds a `vocab.json` + `merges.txt` pair derived from the
  vendored `clip/bpe_simple_vocab_16e6.txt.gz`. The vocabulary is built the way CLIP
  builds it (see clip/tokenizer.py). `vocab.json` is json.dumps(sort_keys=True,
  ensure_ascii=False), and `merges.txt` is "#version: 0.2" followed by the 48 894 merges.
  The two derived files are byte-identical to the published pair: their sha256 are
  f3494b2b345fa180ca51ec80ab47d1bbb0218d60089264d5ee9bb0619af4a4b7 (vocab.json) and
  9fd691f7c8039210e0fced15865466c65820d09b63988b0174bfe25de299051a (merges.txt).
  Provenance of that claim: openai/clip-vit-large-patch14 (the tokenizer CompVis' SD 1
  loads) cannot be fetched here. The comparison was made with the `tokenizer/` folder
  of runwayml/stable-diffusion-v1-5, which diffusers' SD 1.5 pipelines load; its
  tokenizer_config.json names it a CLIPTokenizer with model_max_length 77. The copy
  compared is the GitHub mirror Hny0305Lin/fork_pastel_mix @ 75aad46 (blobs 52579c2e
  and 76e821f1). Both follow CLIP's construction of the vocabulary: 256 byte symbols,
  the same with </w>, 48 894 merges, then the 2 specials. transformers' slow tokenizer
  reads exactly those 48 894 merge lines. tests/test_clip_tokenizer.py re-derives the
  files and checks both hashes.
* **SD 2 tokenizer:** open_clip's `tokenize`. open_clip_torch is installed with --no-deps, so
  `import open_clip` fails for lack of torchvision. **For the tokenizer, this script loads
  open_clip's `tokenizer.py` by file path.** That file needs only ftfy, regex, numpy and
  torch, and reads its own copy of the BPE file.
* **SD 1 text tower:** transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`, with
  eager attention, which is independent of our SDPA call. transformers 5's `CLIPTextModel`
  has no inner `text_model` module, so our `text_model.` prefix is stripped before the
  strict load.
* **SD 2 text tower:** two references.
  1. transformers' `CLIPTextModel`, loaded through diffusers' own SD 2 conversion,
     `convert_open_clip_checkpoint`, from our state dict under `cond_stage_model.model.`.
     At full size this is exactly what diffusers does to a published SD 2 file: it drops
     block 23 and `text_projection` (SD_2_TEXT_ENCODER_KEYS_TO_IGNORE) and loads a
     23-layer model. That ignore list names block 23 literally, so at tiny size the
     last block is dropped here by the same rule, explicitly.
  2. open_clip's own `CLIP` (the class SD 2's FrozenOpenCLIPEmbedder wraps), built with a minimal
     image tower whose `visual.*` keys are left out. This is the source of the published key names, and it
     checks the fused [q; k; v] order and the `text_projection` orientation
     independently of diffusers. **Importing the open_clip package needs torchvision:
     `_open_clip_package` puts a stub torchvision in `sys.modules` for the duration of
     the import only, then removes it.** The stub affects only open_clip's image
     transforms, which are never called.

Tower fixtures build OUR module from its config and fill it with
`weights.fill_random_(module, seed)`. They then load the same tensors strictly into
the reference and run the reference on seeded ids: real prompts plus one row of
random ids.
"""
import dataclasses
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import ftfy
import torch
from fakes import clip_vocab_files
from parity import BOS, EOS, clip_text_config, reference_sd1_text_encoder, strict_load, strip_text_model_prefix

from clip import TextConfig, TextEncoder
from weights import fill_random_

SEED = 0

# ----------------------------------------------------------------------------- the token corpus
_LONG_WORDS = " ".join(f"word{i}" for i in range(60))
CORPUS = [
    # plain text and case
    "a photo of a cat", "A Photo Of A CAT", "ÉCOLE Élégante", "iPhone McDonald's", "CamelCaseWordsHere",
    # punctuation
    "Hello, world! How's it going?...", "a cat -- on a mat; (really) [sure] {ok}", "$100 & 50% off #sale @home",
    "a/b\\c|d_e~f^g`h", "..!!??;;::", "e-mail: someone@example.com, https://example.com/a?b=c",
    # apostrophes and contractions
    "don't it's we're they've I'm you'll he'd", "O'Neil's rock 'n' roll ''quoted''", "DON'T IT'S",
    "don’t stop ‘curly’ “double”",
    # digits (every digit is its own piece) and other numerals
    "1234567890", "3.14159 and 2023-01-01", "10x10 1st 2nd 3rd 100km/h", "x²+y³=z⁴ ½ ⅓ Ⅻ", "٣ ४ 七",
    # accents, combining marks, case-folding corners
    "café crème brûlée", "naïve façade Ångström", "cafe\u0301 (combining accent)", "Straße STRASSE ß", "İstanbul ǅ",
    # non-Latin scripts
    "一只猫坐在垫子上", "猫がマットの上に座っている", "고양이가 매트 위에 앉아 있다", "Кошка сидит на коврике",
    "Καλημέρα κόσμε", "قطة على السجادة", "חתול על השטיח", "बिल्ली चटाई पर बैठी है", "แมวนั่งบนเสื่อ",
    # emoji: single, ZWJ sequence, flag, variation selector
    "a cat 🐱 on a mat 😀", "👨‍👩‍👧‍👦 family", "🇫🇷 flag ❤️ ❤", "🙂🙃🙂🙃 repeated emoji",
    # HTML entities
    "fish &amp; chips", "&lt;b&gt;bold&lt;/b&gt;", "caf&eacute; &copy; 2023", "&#39;quoted&#39; &#x263A;",
    "&amp;amp; twice escaped", "5 &gt; 3 < 4", "an <b>html</b> tag",
    "x &amp;lt; y < z (twice escaped, with '<')",
    # what ftfy repairs: mojibake, full-width forms, ligatures, control characters, terminal escapes
    "cafÃ© mojibake", "ＡＢＣ１２３ full width", "ﬁne ﬂour ligatures", "a\x00b\x07c control",
    "\x1b[31mred\x1b[0m text",
    # whitespace runs and exotic spaces
    "a   cat\t\ton\n\na mat", "   leading and trailing   ", "non\u00a0breaking\u3000ideographic\u2003em",
    "zero\u200bwidth",
    # the empty prompt (SD's unconditional prompt) and blank ones
    "", "   ", "\n\t",
    # special tokens spelled out in the prompt
    "<|startoftext|> a cat <|endoftext|>", "<start_of_text> <end_of_text>", "<|ENDOFTEXT|> in capitals",
    # repetition
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "ha ha ha ha ha", "!!!!!!!!!!!!!!!!!!!!!!!!",
    # over 77 tokens, and the boundary: 74, 75 (fits exactly) and 76 (one dropped) prompt tokens
    _LONG_WORDS,
    "a high resolution photograph of " + ", ".join(["a red apple on a wooden table"] * 12),
    " ".join(["cat"] * 75), " ".join(["cat"] * 76), " ".join(["cat"] * 74),
]


# ----------------------------------------------------------------------------- references
def write_vocab_files(folder: Path) -> tuple[Path, Path]:
    """vocab.json + merges.txt derived from the vendored BPE file, in the published format."""
    for name, content in clip_vocab_files().items():
        (folder / name).write_bytes(content)
    return folder / "vocab.json", folder / "merges.txt"


def _transformers_tokenizer():
    from transformers import CLIPTokenizer
    with tempfile.TemporaryDirectory() as folder:
        write_vocab_files(Path(folder))
        return CLIPTokenizer.from_pretrained(folder)


def _open_clip_tokenizer_module():
    """open_clip/tokenizer.py loaded by path (the package itself cannot be imported without torchvision)."""
    package = Path(importlib.util.find_spec("open_clip").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_reference", package / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _open_clip_package():
    """`import open_clip` with a throw-away torchvision stub in sys.modules (see the module docstring)."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    import transformers  # noqa: F401  (imported first, so that it sees the real "no torchvision")

    class _AnyAttribute(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return cls

    class _Placeholder(metaclass=_AnyAttribute):
        def __init__(self, *args, **kwargs):
            pass

    class _StubModule(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Placeholder

    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional",
             "torchvision.ops", "torchvision.ops.misc"]
    assert not any(n in sys.modules for n in names), "a real torchvision is loaded; import open_clip directly"
    sys.modules.update({n: _StubModule(n) for n in names})
    try:
        import open_clip
    finally:
        for n in names:
            del sys.modules[n]
    return open_clip


def _hf_ids(tokenizer, prompts):
    """SD 1 pipelines' call: pad to max_length 77 with truncation."""
    return tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def _ids_for_towers(prompts, pad_id, rows_of_random_ids=1):
    """Ids of real prompts (from the reference tokenizer of the layout) plus rows of random ids.

    A random row is BOS, random ids from the whole vocabulary, EOS at position 40, then padding.
    """
    if pad_id == EOS:
        ids = _hf_ids(_transformers_tokenizer(), prompts)
    else:
        ids = _open_clip_tokenizer_module().tokenize(prompts)
    generator = torch.Generator().manual_seed(SEED)
    random_rows = torch.full((rows_of_random_ids, 77), pad_id, dtype=torch.long)
    random_rows[:, 0] = BOS
    random_rows[:, 1:40] = torch.randint(0, BOS, (rows_of_random_ids, 39), generator=generator)
    random_rows[:, 40] = EOS
    return torch.cat([ids, random_rows])


def _key_shapes(state_dict, prefix="") -> dict:
    return {prefix + k: list(v.shape) for k, v in state_dict.items()}


def _ours(config: TextConfig) -> TextEncoder:
    return fill_random_(TextEncoder(config), SEED).eval()


# ----------------------------------------------------------------------------- fixtures
def clip_tokens():
    """Token ids of CORPUS from both references, and their decodings.

    sd1_ids_transformers_raw : transformers 5 CLIPTokenizer on the prompt as typed.
    sd1_ids_transformers_ftfy: the same tokenizer on ftfy.fix_text(prompt). This is what
                               the SD 1 stack computed: transformers' slow CLIPTokenizer
                               ran ftfy.fix_text before its own normalisation.
    sd2_ids_open_clip        : open_clip.tokenize(prompt).
    """
    hf = _transformers_tokenizer()
    open_clip_tokenizer = _open_clip_tokenizer_module()
    sd1_raw = _hf_ids(hf, CORPUS)
    sd1_ftfy = _hf_ids(hf, [ftfy.fix_text(p) for p in CORPUS])
    sd2 = open_clip_tokenizer.tokenize(CORPUS)

    def open_clip_decode(row):
        """SimpleTokenizer.decode of the tokens up to the last EOS, without BOS/EOS (as skip_special_tokens)."""
        ids = row.tolist()
        ids = ids[:len(ids) - ids[::-1].index(EOS)]
        return open_clip_tokenizer._tokenizer.decode([i for i in ids if i not in (BOS, EOS)])

    return {
        "prompts": CORPUS,
        "sd1_ids_transformers_raw": sd1_raw,
        "sd1_ids_transformers_ftfy": sd1_ftfy,
        "sd2_ids_open_clip": sd2,
        "sd1_decoded_transformers": hf.batch_decode(sd1_ftfy, skip_special_tokens=True),
        "sd2_decoded_open_clip": [open_clip_decode(row) for row in sd2],
    }


SD1_TINY = TextConfig(layout="sd1", width=32, layers=2, heads=4, activation="quick_gelu")   # the "tiny" preset's
SD1_FULL = TextConfig(layout="sd1", width=768, layers=12, heads=12, activation="quick_gelu")
SD2_TINY = TextConfig(layout="sd2", width=32, layers=3, heads=4, activation="gelu", skip_last_layers=1,
                      projection_dim=24)
SD2_FULL = TextConfig(layout="sd2", width=1024, layers=24, heads=16, activation="gelu", skip_last_layers=1)
PROMPTS = ["a photo of a cat", ""]


def _sd1_fixture(config: TextConfig, projection_dim: int | None, dtype=torch.float32):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    ids = _ids_for_towers(PROMPTS if projection_dim else PROMPTS[:1], pad_id=EOS)   # fewer rows at full size
    ours = _ours(dataclasses.replace(config, projection_dim=projection_dim))
    state = ours.state_dict()
    out = reference_sd1_text_encoder(ours).to(dtype)(input_ids=ids)
    values = {"config": dataclasses.asdict(config), "seed": SEED, "ids": ids,
              "context": out.last_hidden_state, "pooled": out.pooler_output}
    if projection_dim is not None:
        with_projection = strict_load(
            CLIPTextModelWithProjection(clip_text_config(config, config.layers, projection_dim)), state).to(dtype)
        values["projection_dim"] = projection_dim
        values["text_embeds"] = with_projection(input_ids=ids).text_embeds
    with torch.device("meta"):
        published = CLIPTextModel(clip_text_config(config, config.layers))
    # Published SD 1 files use text_model.* (transformers 4's layout); transformers 5 drops the prefix.
    values["published_keys"] = _key_shapes(published.state_dict(), prefix="text_model.")
    return values


def clip_sd1_tiny(dtype=torch.float32):
    """The tiny preset's SD 1 tower (plus a 24-wide projection) vs CLIPTextModel(+WithProjection)."""
    return _sd1_fixture(SD1_TINY, projection_dim=24, dtype=dtype)


def clip_sd1_full(dtype=torch.float32):
    """OpenAI ViT-L/14 text tower (SD 1.x) vs CLIPTextModel: context and pooled output."""
    return _sd1_fixture(SD1_FULL, projection_dim=None, dtype=dtype)


def _open_clip_model(config: TextConfig, on_meta: bool = False):
    """open_clip's CLIP with this text tower and a minimal image tower (whose keys are dropped)."""
    _open_clip_package()      # the package, checked first (its version and extra)
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    text_cfg = CLIPTextCfg(context_length=config.context_length, vocab_size=config.vocab_size, width=config.width,
                           heads=config.heads, layers=config.layers)
    vision_cfg = CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16, image_size=32)
    with torch.device("meta" if on_meta else "cpu"):
        return CLIP(embed_dim=config.resolved_projection_dim, vision_cfg=vision_cfg, text_cfg=text_cfg,
                    quick_gelu=config.activation == "quick_gelu").eval()


def _open_clip_text_keys(model) -> dict:
    return {k: v for k, v in _key_shapes(model.state_dict()).items() if not k.startswith("visual.")}


def _diffusers_sd2_context(ours: TextEncoder, ids: torch.Tensor, config: TextConfig, dtype=torch.float32):
    """SD 2's context as diffusers computes it from a single file: convert_open_clip_checkpoint -> CLIPTextModel."""
    from diffusers.loaders.single_file_utils import SD_2_TEXT_ENCODER_KEYS_TO_IGNORE, convert_open_clip_checkpoint
    from transformers import CLIPTextModel
    kept_layers = config.layers - config.skip_last_layers
    checkpoint = {"cond_stage_model.model." + k: v for k, v in ours.state_dict().items()}
    if config.layers != 24:   # diffusers' ignore list names block 23 of ViT-H; apply its rule to our last block
        dropped = {k.replace(".23.", f".{kept_layers}.") for k in SD_2_TEXT_ENCODER_KEYS_TO_IGNORE}
        checkpoint = {k: v for k, v in checkpoint.items() if k not in dropped}
    reference = CLIPTextModel(clip_text_config(config, kept_layers))
    converted = convert_open_clip_checkpoint(reference, checkpoint)
    strict_load(reference, strip_text_model_prefix(converted))
    return reference.to(dtype)(input_ids=ids).last_hidden_state


def clip_sd2_tiny(dtype=torch.float32):
    """A tiny OpenCLIP-style tower (3 blocks, context from block 2) vs diffusers/transformers and open_clip."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModelWithProjection
    config = SD2_TINY
    ids = _ids_for_towers(PROMPTS, pad_id=0)
    ours = _ours(config)
    values = {"config": dataclasses.asdict(config), "seed": SEED, "ids": ids,
              "context": _diffusers_sd2_context(ours, ids, config, dtype)}

    # CLIP's text embedding through transformers: all blocks and the projection. The "model." prefix keeps
    # these keys clear of diffusers' ignore list, so that the converter also maps text_projection (transposed).
    with_projection = CLIPTextModelWithProjection(clip_text_config(config, config.layers, config.projection_dim))
    converted = convert_open_clip_checkpoint(with_projection, {"model." + k: v for k, v in ours.state_dict().items()},
                                             prefix="model.")
    values["text_embeds"] = strict_load(with_projection, converted).to(dtype)(input_ids=ids).text_embeds

    # open_clip itself: the class SD 2's FrozenOpenCLIPEmbedder wraps, and its forward with layer="penultimate".
    model = _open_clip_model(config)
    visual = {k: v for k, v in model.state_dict().items() if k.startswith("visual.")}
    strict_load(model, {**ours.state_dict(), **visual}).to(dtype)
    x = model.token_embedding(ids) + model.positional_embedding
    for block in model.transformer.resblocks[:config.layers - config.skip_last_layers]:
        x = block(x, attn_mask=model.attn_mask)
    values["context_open_clip"] = model.ln_final(x)
    values["text_embeds_open_clip"] = model.encode_text(ids)
    values["published_keys"] = _open_clip_text_keys(model)
    return values


def clip_sd2_full(dtype=torch.float32):
    """OpenCLIP ViT-H/14 text tower (SD 2.x): penultimate block + ln_final vs diffusers' 23-layer CLIPTextModel."""
    config = SD2_FULL
    official = _open_clip_package().get_model_config("ViT-H-14")
    assert (official["embed_dim"], *(official["text_cfg"][k] for k in ("width", "heads", "layers"))) == \
        (config.resolved_projection_dim, config.width, config.heads, config.layers), official
    ids = _ids_for_towers(PROMPTS[:1], pad_id=0)
    ours = _ours(config)
    values = {"config": dataclasses.asdict(config), "seed": SEED, "ids": ids,
              "context": _diffusers_sd2_context(ours, ids, config, dtype)}
    values["published_keys"] = _open_clip_text_keys(_open_clip_model(config, on_meta=True))
    return values


FIXTURES = {
    "clip_tokens": clip_tokens,
    "clip_sd1_tiny": clip_sd1_tiny,
    "clip_sd1_full": clip_sd1_full,
    "clip_sd2_tiny": clip_sd2_tiny,
    "clip_sd2_full": clip_sd2_full,
}
