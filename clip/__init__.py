"""CLIP: the BPE tokenizer, the text towers of SD 1 and SD 2, and the image tower and model used for ranking."""
from .image_encoder import IMAGE_CONFIGS, ImageConfig, ImageEncoder
from .model import CLIP_NAMES, CLIPModel, cosine_distance
from .preprocess import CLIP_MEAN, CLIP_STD, preprocess
from .text_encoder import TextConfig, TextEncoder
from .tokenizer import Tokenizer

__all__ = ["Tokenizer", "TextConfig", "TextEncoder", "ImageConfig", "ImageEncoder", "IMAGE_CONFIGS",
           "preprocess", "CLIP_MEAN", "CLIP_STD", "CLIPModel", "CLIP_NAMES", "cosine_distance"]
