"""CLIP for Stable Diffusion: the BPE tokenizer and the text towers."""
from .tokenizer import Tokenizer
from .text_encoder import TextConfig, TextEncoder

__all__ = ["Tokenizer", "TextConfig", "TextEncoder"]
