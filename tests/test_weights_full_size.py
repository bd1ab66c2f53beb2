"""A full-size single file: SD 2.1-768's published name, keys and shapes (2.6 GB in float16), loaded without a copy.

Slow: writing the file takes seconds to a minute. The file lives in tmp_path and is deleted at the end.
"""
from pathlib import Path

import fakes
import pytest
import torch
from helpers import linux_only, mapped_files
from safetensors import safe_open

import weights
from weights import presets, single_file

pytestmark = [pytest.mark.slow, linux_only]


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_full_size_sd21_single_file_loads_memory_mapped_with_preset_facts_and_every_tensor_in_place(tmp_path):
    spec = presets.get("sd-2.1")
    path = tmp_path / spec.single_file                      # v2-1_768-ema-pruned.safetensors
    try:
        fakes.write_single_file(path, spec, dtype=torch.float16, ema_copies=False, values="constant")
        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
        assert {"model_ema.decay", "model_ema.num_updates", "alphas_cumprod", "cond_stage_model.model.logit_scale",
                "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight"} <= keys

        before = resident_bytes()
        loaded = weights.load(path, dtype=torch.float16)
        grown = resident_bytes() - before
        assert grown < 0.05 * path.stat().st_size, f"loading grew the resident set by {grown / 2**20:.0f} MiB"

        # The preset's facts, which the weights cannot carry: found from the published file name.
        assert (loaded.spec.name, loaded.spec.prediction_type, loaded.spec.image_size) == ("sd-2.1", "v", 768)
        assert loaded.spec.unet.upcast_attention and loaded.spec.text.skip_last_layers == 1
        assert loaded.tokenizer.pad_id == 0

        # Every weight is a view of the mapped file and holds the value written under its own name.
        spans = mapped_files()[str(path)]
        prefixes = {"unet": single_file.UNET_PREFIX, "vae": single_file.VAE_PREFIX,
                    "text_encoder": single_file.TEXT_PREFIXES["sd2"]}
        count = 0
        for part in prefixes:
            for name, tensor in getattr(loaded, part).state_dict().items():
                assert tensor.dtype == torch.float16
                assert any(start <= tensor.data_ptr() < end for start, end in spans), name
                assert tensor.view(-1)[0].item() == pytest.approx(fakes.constant_value(name), abs=1e-3), name
                count += 1
        assert count == sum(not single_file.is_non_weight(k) for k in keys)
    finally:
        path.unlink(missing_ok=True)
