"""blend.evaluate.LPIPS against the lpips package, and its loader weights/vgg.py.

The reference is lpips 0.1.4's `LPIPS(net="vgg")`, built with `pnet_rand=True` (no download) and
then loaded, strictly, with the same state dict as ours: a deterministic random VGG16 backbone
and the vendored v0.1 heads. lpips builds its backbone from `torchvision.models.vgg16().features`.
PyPI's torchvision wheel for Linux is built against CUDA torch: its C++ extension cannot load
beside the CPU torch, and `import torchvision` then fails while registering its operators. So the
Makefile unpacks the wheel into .venv/reference-torchvision (off sys.path: transformers must keep
seeing no torchvision), and `reference_lpips` imports torchvision's own Python `models/vgg.py`
from there, under a package module that skips torchvision's __init__ (the operator registrations),
for the duration of `import lpips` only. The VGG16 that lpips taps is thus torchvision's code.
"""
import importlib
import sys
import types
from pathlib import Path

import fakes
import pytest
import torch

from blend.evaluate.lpips import HEADS_FILE, VGG16Taps, load_lpips
from weights import NotAModelError, OfflineError, StateDictMismatchError, fill_random_
from weights.vgg import HUB_FILES, expected_backbone_shapes, lpips_heads, lpips_name

TORCHVISION_FOLDER = Path(sys.prefix) / "reference-torchvision" / "torchvision"


def reference_lpips_package():
    """`import lpips` with torchvision's Python VGG16 (module docstring); skips when either is missing."""
    if "lpips" in sys.modules:
        return sys.modules["lpips"]
    if importlib.util.find_spec("lpips") is None:
        pytest.skip("needs lpips 0.1.4 (`make setup-test` installs it with --no-deps)")
    if not (TORCHVISION_FOLDER / "models" / "vgg.py").is_file():
        pytest.skip(f"needs torchvision's Python sources in {TORCHVISION_FOLDER.parent} (`make setup-test`)")
    names = [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]
    assert not names, "a torchvision is already imported; import lpips directly"
    package = types.ModuleType("torchvision")
    package.__path__ = [str(TORCHVISION_FOLDER)]
    models = types.ModuleType("torchvision.models")
    models.__path__ = [str(TORCHVISION_FOLDER / "models")]
    sys.modules.update({"torchvision": package, "torchvision.models": models})
    try:
        vgg = importlib.import_module("torchvision.models.vgg")
        models.vgg16, models.VGG16_Weights = vgg.vgg16, vgg.VGG16_Weights
        package.models = models
        import lpips
    finally:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    return lpips


@pytest.fixture(scope="module")
def ours():
    model = load_lpips("random")
    yield model
    del model


@pytest.fixture(scope="module")
def reference(ours):
    lpips = reference_lpips_package()
    with pytest.warns(UserWarning):          # torchvision's notice that `pretrained=` is deprecated
        model = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False).eval()
    state = {k: v for k, v in ours.state_dict().items() if not k.startswith("scaling_layer.")}
    state.update({k: v for k, v in model.state_dict().items() if k.startswith("scaling_layer.")})  # its own
    state.update({f"lins.{i}.model.1.weight": state[f"lin{i}.model.1.weight"] for i in range(5)})  # its aliases
    model.load_state_dict(state, strict=True)
    yield model
    del model


@pytest.mark.reference
def test_lpips_state_dict_keys_are_the_lpips_packages(ours, reference):
    theirs = [key for key in reference.state_dict() if not key.startswith("lins.")]
    assert list(ours.state_dict()) == theirs
    assert all(ours.state_dict()[k].shape == reference.state_dict()[k].shape for k in theirs)


@pytest.mark.reference
@pytest.mark.parametrize("shape", [(3, 3, 64, 64), (2, 3, 48, 80), (1, 3, 224, 224), (2, 3, 37, 53)])
def test_lpips_matches_the_lpips_package_within_1e5_relative(ours, reference, shape):
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(shape, generator=generator) * 2 - 1
    y = (x + 0.3 * torch.randn(shape, generator=generator)).clamp(-1, 1)
    y[0] = torch.rand(shape[1:], generator=generator) * 2 - 1          # one unrelated pair, one close pair
    with torch.no_grad():
        expected = reference(x, y).flatten().double()
        found = ours(x, y).double()
    assert found.shape == (shape[0],)
    assert (expected > 0).all()
    relative = ((found - expected).abs() / expected.abs()).max().item()
    assert relative <= 1e-5, f"max relative difference {relative:.3g}"


def test_lpips_of_an_image_with_itself_is_zero_and_it_is_symmetric(ours):
    x = torch.rand(2, 3, 40, 40) * 2 - 1
    y = torch.rand(2, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        assert ours(x, x).abs().max().item() == 0
        assert torch.allclose(ours(x, y), ours(y, x), rtol=1e-6)
        assert (ours(x, y) > 0).all()


def test_lpips_heads_file_holds_the_five_nonnegative_v01_heads():
    heads = lpips_heads(HEADS_FILE)
    assert [tuple(heads[f"lin{i}.model.1.weight"].shape) for i in range(5)] == [
        (1, 64, 1, 1), (1, 128, 1, 1), (1, 256, 1, 1), (1, 512, 1, 1), (1, 512, 1, 1)]
    assert all((w >= 0).all() for w in heads.values())     # LPIPS v0.1 fits them with a non-negativity clamp


def timm_vgg16_file(path: Path) -> Path:
    """A file laid out as timm/vgg16.tv_in1k's model.safetensors, with deterministic random values."""
    from safetensors.torch import save_file
    tensors = {key: torch.randn(shape) * 0.05 for key, shape in expected_backbone_shapes().items()}
    tensors.update({"pre_logits.fc1.weight": torch.zeros(8, 512, 7, 7), "pre_logits.fc1.bias": torch.zeros(8),
                    "pre_logits.fc2.weight": torch.zeros(8, 8, 1, 1), "pre_logits.fc2.bias": torch.zeros(8),
                    "head.fc.weight": torch.zeros(10, 8), "head.fc.bias": torch.zeros(10)})
    save_file(tensors, str(path))   # the classifier is smaller than the real one: LPIPS never reads it
    return path


def test_lpips_backbone_loads_a_timm_layout_file_renaming_features_to_slices(tmp_path):
    path = timm_vgg16_file(tmp_path / "model.safetensors")
    model = load_lpips(path)
    from safetensors.torch import load_file
    published = load_file(str(path))
    assert lpips_name("features.5.weight") == "net.slice2.5.weight"
    assert lpips_name("features.28.bias") == "net.slice5.28.bias"
    for key in expected_backbone_shapes():
        assert torch.equal(model.state_dict()[lpips_name(key)], published[key])
    assert list(VGG16Taps().state_dict()) == [lpips_name(k)[len("net."):] for k in expected_backbone_shapes()]


def test_lpips_backbone_refuses_other_files_naming_the_file(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "bn.safetensors"
    tensors = {key: torch.zeros(shape) for key, shape in expected_backbone_shapes().items()}
    tensors["features.1.running_mean"] = torch.zeros(64)          # a VGG16-BN has norms between the convs
    del tensors["features.28.bias"]
    save_file(tensors, str(path))
    with pytest.raises(StateDictMismatchError) as error:
        load_lpips(path)
    message = str(error.value)
    assert str(path) in message and "features.28.bias" in message and "features.1.running_mean" in message
    (tmp_path / "vgg16.pth").write_bytes(b"a pickle")
    with pytest.raises(NotAModelError):
        load_lpips(tmp_path / "vgg16.pth")


def test_lpips_offline_without_vgg_weights_gives_one_paragraph_naming_repository_and_fix(offline_cache):
    with pytest.raises(OfflineError) as error:
        load_lpips("vgg16")
    message = str(error.value)
    assert HUB_FILES["vgg16"][:2] == ("timm/vgg16.tv_in1k", "model.safetensors")
    assert "model.safetensors of timm/vgg16.tv_in1k" in message and "HF_HUB_OFFLINE is set" in message
    assert "hf download timm/vgg16.tv_in1k model.safetensors" in message and "--lpips random" in message


def test_lpips_reads_a_cached_hub_file_offline(offline_cache, tmp_path):
    content = timm_vgg16_file(tmp_path / "model.safetensors").read_bytes()
    fakes.write_hub_cache(offline_cache, "timm/vgg16.tv_in1k", {"model.safetensors": content})
    model = load_lpips("vgg16")
    assert model.net.slice1[0].weight.shape == (64, 3, 3, 3)


def test_random_backbone_is_deterministic():
    a, b = load_lpips("random"), load_lpips("random")
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert torch.equal(a.net.slice1[0].weight, fill_random_(VGG16Taps(), 7).slice1[0].weight)
