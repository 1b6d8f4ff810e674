"""What `verify` needs from a loaded model: greedy ids, and logits teacher-forced over given ids.

Both implementations answer the same two questions for one page and one prompt:
- `greedy(image, prompt, n)`: the ids the production generate path picks (no repetition
  guard, so both sides decode the same number of steps), stop token excluded, and why it stopped;
- `forced_logits(image, prompt, ids)`: float32 logits `(len(ids) + 1, vocab)` on the CPU, row i
  predicting the token after the prompt and `ids[:i]`. Both sides get the same `ids` (the
  reference's greedy continuation), so their rows are comparable one for one.
The native side teacher-forces through its own engine (packed prefill, then one cached decode
step per token): the code path a run uses, not a different full-sequence forward.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from PIL import Image

from pipeline.compat.remote_recognizer import RemoteRecognizer
from pipeline.model.devices import inference


class LogitProbe(Protocol):
    impl: str
    recognizer: Any

    def greedy(
        self, image: Image.Image, prompt: str, max_new_tokens: int
    ) -> tuple[list[int], str]: ...

    def forced_logits(self, image: Image.Image, prompt: str, ids: list[int]) -> torch.Tensor: ...


class NativeProbe:
    impl = "native"

    def __init__(self, recognizer: Any) -> None:
        self.recognizer = recognizer

    def _embeds(self, image: Image.Image, prompt: str) -> torch.Tensor:
        return self.recognizer.prompt_embeddings([image], prompt)[0]

    def greedy(self, image: Image.Image, prompt: str, max_new_tokens: int) -> tuple[list[int], str]:
        rec = self.recognizer
        with inference(rec.torch_device, rec.torch_dtype):
            embeds = self._embeds(image, prompt)
            (result,) = rec.engine.generate(embeds, [embeds.shape[0]], max_new_tokens, None)
        return list(result.token_ids), result.stop_reason

    def forced_logits(self, image: Image.Image, prompt: str, ids: list[int]) -> torch.Tensor:
        rec = self.recognizer
        rows = []
        with inference(rec.torch_device, rec.torch_dtype):
            embeds = self._embeds(image, prompt)
            batch, logits = rec.engine.prefill(embeds, [embeds.shape[0]], len(ids) + 1)
            rows.append(logits[0].float().cpu())
            for token in ids:
                step = torch.tensor([token], dtype=torch.long, device=rec.torch_device)
                logits = rec.engine.step(batch, step)
                rows.append(logits[0].float().cpu())
        return torch.stack(rows)


class RemoteProbe:
    impl = "remote"

    def __init__(self, recognizer: Any) -> None:
        self.recognizer = recognizer

    def greedy(self, image: Image.Image, prompt: str, max_new_tokens: int) -> tuple[list[int], str]:
        ((ids, _, reason),) = self.recognizer.generate_ids([image], prompt, max_new_tokens)
        return ids, reason

    def forced_logits(self, image: Image.Image, prompt: str, ids: list[int]) -> torch.Tensor:
        rec = self.recognizer
        inputs = rec.inputs([image], prompt)
        return rec.forward_logits(inputs, torch.tensor(ids, dtype=torch.long)).cpu()


def probe_for(recognizer: Any) -> NativeProbe | RemoteProbe:
    """The probe matching a loaded recognizer (native `Recognizer` or `RemoteRecognizer`)."""
    if isinstance(recognizer, RemoteRecognizer):
        return RemoteProbe(recognizer)
    return NativeProbe(recognizer)


def decode(probe: NativeProbe | RemoteProbe, ids: list[int]) -> str:
    return probe.recognizer.tokenizer.decode(ids)
