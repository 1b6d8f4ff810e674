"""The AnandaSky module tree: vision encoder, projector, Qwen3 decoder; names = checkpoint names.

`language_model` is a stock `transformers.Qwen3ForCausalLM`, so a Qwen3-0.6B state dict loads
under the `language_model.` prefix unchanged, and the same weights can run through
`generate()` (see `reference.py`) as well as through our own engine (`decoder.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.model.config import AnandaSkyConfig
from pipeline.model.vision import VisionEncoder, make_projector

TIED_KEYS = ("language_model.lm_head.weight",)


def qwen3_config(config: AnandaSkyConfig):
    from transformers import Qwen3Config

    return Qwen3Config(**config.to_qwen3_kwargs())


class AnandaSkyModel(nn.Module):
    def __init__(self, config: AnandaSkyConfig) -> None:
        super().__init__()
        from transformers import Qwen3ForCausalLM

        self.config = config
        self.vision = VisionEncoder(config.vision)
        self.projector = make_projector(config.projector)
        self.language_model = Qwen3ForCausalLM(qwen3_config(config))
        self.tie_weights()

    def tie_weights(self) -> None:
        """Qwen3-0.6B shares the input embedding with the LM head (one tensor, stored once)."""
        if self.config.text.tie_word_embeddings:
            lm = self.language_model
            lm.lm_head.weight = lm.model.embed_tokens.weight

    def reset_rotary(self) -> None:
        """Recompute the decoder's RoPE frequencies (a non-persistent float32 buffer).

        Needed after building on the meta device or casting to half precision: the buffer is
        not in the checkpoint and must stay float32.
        """
        model = self.language_model.model
        device = model.embed_tokens.weight.device
        model.rotary_emb = type(model.rotary_emb)(config=self.language_model.config).to(device)

    def encode_images(
        self, patches: torch.Tensor, grids: Sequence[tuple[int, int]]
    ) -> torch.Tensor:
        """Packed patches `(T, patch_dim)` to decoder embeddings `(T, text_hidden)`."""
        return self.projector(self.vision(patches, grids))

    def embed_prompt(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Token embeddings with every `<|image_pad|>` replaced, in order, by an image embedding."""
        embeds = self.language_model.model.embed_tokens(input_ids)
        slots = input_ids == self.config.special_tokens.image_pad_id
        count = int(slots.sum())
        if count != image_embeds.shape[0]:
            raise ValueError(
                f"prompt has {count} image placeholders but {image_embeds.shape[0]} image embeddings"
            )
        if count:
            embeds = embeds.masked_scatter(slots[..., None], image_embeds.to(embeds.dtype))
        return embeds

    def num_parameters(self) -> int:
        """Parameters counted once each (the tied LM head is the embedding)."""
        seen = {id(p): p.numel() for p in self.parameters()}
        return sum(seen.values())


def count_parameters(config: AnandaSkyConfig) -> int:
    """Parameter count of a config without allocating weights (built on the meta device)."""
    with torch.device("meta"):
        model = AnandaSkyModel(config)
    return model.num_parameters()
