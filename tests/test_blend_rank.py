"""blend.rank (paper §4.4) and its loader weights.clip_ranker.load_clip.

The order is checked where the answer is known: a stand-in ranker whose image embedding is
the mean colour of the masked image, so the text "red" = (1, 0, 0) ranks images by how red
their edited region is, whatever their background. The real towers are checked against
transformers in tests/test_clip_image_encoder.py.
"""
import fakes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from blend.editor import EditInputError
from blend.rank import masked_result, rank
from clip import CLIPModel, preprocess
from weights import NotAModelError, OfflineError, StateDictMismatchError, UnknownSourceError
from weights.clip_ranker import HUB_FILES, load_clip

H, W = 16, 24
EDITED = (slice(None), slice(None), slice(4, 12), slice(0, 12))    # the left half, rows 4-11


class MeanColourRanker:
    """image embedding = mean RGB of the masked image in [0, 1]; text embedding = a fixed direction."""

    def __init__(self, text_direction):
        self.text_direction = torch.tensor([text_direction], dtype=torch.float32)
        self.seen = None

    def image_embeddings(self, images):
        self.seen = images
        return ((images + 1) / 2).mean(dim=(2, 3))

    def text_embeddings(self, prompts):
        return self.text_direction


def edit_mask() -> torch.Tensor:
    mask = torch.zeros(H, W)
    mask[EDITED[2:]] = 1
    return mask


def images_with_edited_colours(colours, seed=0) -> torch.Tensor:
    """Random backgrounds in [−1, 1]; the edited region of image k filled with colours[k] (in [0, 1])."""
    images = torch.rand(len(colours), 3, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    for k, colour in enumerate(colours):
        images[k][EDITED[1:]] = (torch.tensor(colour) * 2 - 1).view(3, 1, 1)
    return images


# ----------------------------------------------------------------------------- the order
def test_rank_orders_by_cosine_distance_of_the_masked_region_to_the_prompt():
    colours = [(0.2, 0.2, 0.9), (0.9, 0.1, 0.1), (0.5, 0.5, 0.5), (0.8, 0.4, 0.0)]
    order, scores = rank(images_with_edited_colours(colours), "red", edit_mask(),
                         ranker=MeanColourRanker([1.0, 0.0, 0.0]))
    # By hand: the masked mean colour is colour · (edited fraction), so 1 − cos = 1 − r / ‖colour‖.
    expected = [1 - c[0] / np.linalg.norm(c) for c in colours]
    assert order == [1, 3, 2, 0]                      # red, orange, grey, blue
    np.testing.assert_allclose(scores, sorted(expected), atol=1e-6)
    assert scores == sorted(scores)


def test_rank_ignores_the_background_outside_the_mask():
    colours = [(0.2, 0.2, 0.9), (0.9, 0.1, 0.1), (0.8, 0.4, 0.0)]
    ranker = MeanColourRanker([1.0, 0.0, 0.0])
    first = rank(images_with_edited_colours(colours, seed=0), "red", edit_mask(), ranker=ranker)
    other_backgrounds = rank(images_with_edited_colours(colours, seed=1), "red", edit_mask(), ranker=ranker)
    assert first[0] == other_backgrounds[0]
    np.testing.assert_allclose(first[1], other_backgrounds[1], atol=1e-6)


def test_masked_result_multiplies_in_zero_one_units_so_the_background_is_black():
    images = images_with_edited_colours([(0.9, 0.1, 0.1)])
    masked = masked_result(images, edit_mask())
    outside = 1 - edit_mask()
    assert torch.equal(masked[0][:, outside.bool()], torch.full((3, int(outside.sum())), -1.0))
    assert torch.equal(masked[EDITED], images[EDITED])
    assert torch.allclose((masked + 1) / 2, (images + 1) / 2 * edit_mask())    # the official: samples · org_mask


def test_equal_scores_keep_the_input_order():
    colours = [(0.5, 0.5, 0.5), (0.9, 0.0, 0.0), (0.5, 0.5, 0.5)]
    order, scores = rank(images_with_edited_colours(colours), "red", edit_mask(),
                         ranker=MeanColourRanker([1.0, 0.0, 0.0]))
    assert order == [1, 0, 2] and scores[1] == scores[2]


def test_a_soft_mask_is_thresholded_at_one_half_and_an_empty_one_refused():
    colours = [(0.2, 0.2, 0.9), (0.9, 0.1, 0.1)]
    ranker = MeanColourRanker([1.0, 0.0, 0.0])
    soft = edit_mask() * 0.6 + 0.3 * (1 - edit_mask())           # 0.6 inside, 0.3 outside
    rank(images_with_edited_colours(colours), "red", soft, ranker=ranker)
    hard_seen = ranker.seen.clone()
    rank(images_with_edited_colours(colours), "red", edit_mask(), ranker=ranker)
    assert torch.equal(hard_seen, ranker.seen)
    with pytest.raises(EditInputError, match="the mask is empty"):
        rank(images_with_edited_colours(colours), "red", torch.zeros(H, W), ranker=ranker)


def test_rank_reads_masks_by_the_editors_rules_from_blend_images():
    import ast
    import importlib
    import inspect
    module = importlib.import_module("blend.rank")                            # (blend.rank is also the function)
    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(module)))
                if isinstance(node, ast.ImportFrom)}
    assert "images" in imported and "editor" not in imported                   # no cycle with blend.editor
    colours = [(0.2, 0.2, 0.9), (0.9, 0.1, 0.1)]
    ranker = MeanColourRanker([1.0, 0.0, 0.0])
    layer = np.zeros((H, W, 4), dtype=np.uint8)                                # an editor's export: the region
    layer[..., 3] = edit_mask().numpy() * 255                                  # painted in alpha, colour black
    with pytest.warns(UserWarning, match="alpha channel"):
        from_alpha = rank(images_with_edited_colours(colours), "red", Image.fromarray(layer, "RGBA"), ranker=ranker)
    assert from_alpha == rank(images_with_edited_colours(colours), "red", edit_mask(), ranker=ranker)


# ----------------------------------------------------------------------------- the real pipeline, tiny
@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip("tiny")


def test_rank_with_tiny_clip_is_one_minus_cosine_of_clip_embeddings(tiny_clip):
    images = images_with_edited_colours([(0.1, 0.8, 0.3), (0.9, 0.1, 0.1), (0.3, 0.3, 0.6)])
    order, scores = rank(images, "a red apple", edit_mask(), ranker=tiny_clip)
    with torch.no_grad():
        masked = (images + 1) * edit_mask() - 1
        image_embedding = tiny_clip.image_encoder(preprocess(masked, 32))
        text_embedding = tiny_clip.text_encoder.pooled_embedding(tiny_clip.tokenizer(["a red apple"]))
    distances = 1 - F.cosine_similarity(image_embedding, text_embedding)
    assert order == torch.argsort(distances).tolist()
    np.testing.assert_allclose(scores, distances.sort().values.numpy(), atol=1e-6)


def test_pil_images_and_tensors_rank_alike(tiny_clip):
    arrays = np.random.default_rng(0).integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    pil_images = [Image.fromarray(a) for a in arrays]
    tensor = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1
    mask_image = Image.fromarray((edit_mask().numpy() * 255).astype(np.uint8))
    from_pil = rank(pil_images, "a cat", mask_image, ranker=tiny_clip)
    from_tensor = rank(tensor, "a cat", edit_mask(), ranker=tiny_clip)
    assert from_pil[0] == from_tensor[0]
    np.testing.assert_allclose(from_pil[1], from_tensor[1], atol=1e-6)


def test_tiny_clip_loads_through_rank_by_name_and_is_deterministic(tiny_clip):
    images = images_with_edited_colours([(0.1, 0.8, 0.3), (0.9, 0.1, 0.1)])
    assert rank(images, "a cat", edit_mask(), clip_model="tiny") == rank(images, "a cat", edit_mask(), ranker=tiny_clip)


# ----------------------------------------------------------------------------- loading
def published_file(model: CLIPModel, path, extra=None):
    """A transformers-layout CLIPModel file of `model`, with the non-weights published files may carry."""
    tensors = {**model.image_encoder.state_dict(), **model.text_encoder.state_dict(),
               "logit_scale": torch.tensor(4.6052), "text_model.embeddings.position_ids": torch.arange(77)[None],
               "vision_model.embeddings.position_ids": torch.arange(17)[None], **(extra or {})}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def test_load_clip_reads_a_transformers_layout_file_and_ignores_logit_scale_and_position_ids(tiny_clip, tmp_path):
    loaded = load_clip(published_file(tiny_clip, tmp_path / "model.safetensors"))
    for part in ("image_encoder", "text_encoder"):
        ours, theirs = getattr(tiny_clip, part).state_dict(), getattr(loaded, part).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert loaded.image_encoder.config == tiny_clip.image_encoder.config        # read from the shapes


def test_load_clip_refuses_unknown_keys_and_other_files_naming_the_file(tiny_clip, tmp_path):
    path = published_file(tiny_clip, tmp_path / "model.safetensors", extra={"extra.weight": torch.zeros(2)})
    with pytest.raises(NotAModelError, match=r"model\.safetensors: not a transformers CLIPModel file.*extra\.weight"):
        load_clip(path)
    with pytest.raises(UnknownSourceError, match="neither a CLIP model name"):
        load_clip(tmp_path / "absent.safetensors")


def test_hub_repositories_are_openais_transformers_clip_models():
    assert {name: HUB_FILES[name][:2] for name in HUB_FILES} == {
        "ViT-B/16": ("openai/clip-vit-base-patch16", "model.safetensors"),
        "ViT-L/14": ("openai/clip-vit-large-patch14", "model.safetensors")}


def test_offline_without_the_file_the_error_names_repository_file_and_the_fix(offline_cache):
    with pytest.raises(OfflineError) as error:
        rank(images_with_edited_colours([(1, 0, 0)]), "a cat", edit_mask())      # default: ViT-B/16
    message = str(error.value)
    assert "model.safetensors of openai/clip-vit-base-patch16" in message and "HF_HUB_OFFLINE is set" in message
    assert "hf download openai/clip-vit-base-patch16 model.safetensors" in message
    assert "clip_model='DIR/model.safetensors'" in message


def test_offline_a_cached_file_is_found_and_its_shapes_are_checked_against_the_name(tiny_clip, offline_cache,
                                                                                    tmp_path):
    content = published_file(tiny_clip, tmp_path / "tiny.safetensors").read_bytes()
    snapshot = fakes.write_hub_cache(offline_cache, "openai/clip-vit-base-patch16", {"model.safetensors": content})
    with pytest.raises(StateDictMismatchError) as error:       # a tiny file where ViT-B/16 is expected
        load_clip("ViT-B/16")
    message = str(error.value)
    assert str(snapshot / "model.safetensors") in message and "CLIP ViT-B/16" in message
    assert "shape differs" in message and "openai/clip-vit-base-patch16" in message
