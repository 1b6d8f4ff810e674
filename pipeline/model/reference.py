"""The same model through transformers' own `generate()`, one prompt at a time.

This is the baseline the engine is measured and checked against: same weights (the decoder is a
stock `Qwen3ForCausalLM` fed `inputs_embeds`), same prompt, greedy decoding, and the ids must
come out identical to `GenerationEngine` without the repetition guard.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipeline.model.generation import STOP_EOS, STOP_MAX_TOKENS, Generated


def _chosen_logprob_recorder():
    """A logits processor that notes the greedy token's log-prob and changes nothing.

    Cheaper than `output_scores=True`, which keeps a full vocabulary row per step (1.2 GB for
    2048 steps of a 152k vocabulary).
    """
    from transformers import LogitsProcessor

    class ChosenLogprob(LogitsProcessor):
        def __init__(self) -> None:
            self.values: list[torch.Tensor] = []

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            s = scores.float()
            self.values.append(s.max(dim=-1).values - torch.logsumexp(s, dim=-1))
            return scores

    return ChosenLogprob()


def generate_with_transformers(
    language_model: torch.nn.Module,
    embeds: torch.Tensor,
    stop_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int,
) -> Generated:
    """Greedy `generate()` from prompt embeddings `(L, hidden)`; stop token stripped."""
    from transformers import LogitsProcessorList

    result = Generated()
    if max_new_tokens <= 0:
        result.stop_reason = STOP_MAX_TOKENS
        return result
    recorder = _chosen_logprob_recorder()
    inputs = embeds[None]
    mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
    out = language_model.generate(
        inputs_embeds=inputs,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=None,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
        use_cache=True,
        logits_processor=LogitsProcessorList([recorder]),
    )
    ids = out[0].tolist()
    logprobs = torch.cat(recorder.values).tolist() if recorder.values else []
    stops = set(stop_ids)
    for token, logprob in zip(ids, logprobs, strict=False):
        if token in stops:
            result.stop_reason = STOP_EOS
            break
        result.token_ids.append(token)
        result.logprobs.append(logprob)
    if not result.stop_reason:
        result.stop_reason = STOP_MAX_TOKENS
    return result
