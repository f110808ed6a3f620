"""The probe's own rows: a delta to a few tokens' LM-head rows, read at the probe only.

`Llama.probe_head` is None or a `ProbeHead`. `Llama.token_logits` (what the probe reads: the
Yes / No logits at the probe position) adds `h @ delta.T` to those tokens' logits; `Llama.logits`
(what the policy samples from) does not, so the policy stays the base model exactly. The LM
head's own rows (`lora.probe_rows`) move both: each bit of read they give the token, they also
give the policy a push to write Yes or No wherever it writes.

Exported beside the weights as `probe_head.safetensors` ({"ids": int32 [K], "delta": f32 [K, D]});
transformers reads model.safetensors and ignores it, `load_pretrained` attaches it.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

FILE = "probe_head.safetensors"


class ProbeHead(nnx.Module):
    """ids: the K token ids (static); delta f32 [K, D], added to their logits at the probe."""

    def __init__(self, ids, delta):
        self.ids = tuple(int(i) for i in ids)
        self.delta = nnx.Param(jnp.asarray(delta, jnp.float32))

    def rows(self):
        """(ids int32 [K], delta f32 [K, D]), as `Adapter.vocab_rows` gives its rows."""
        return jnp.asarray(self.ids, jnp.int32), self.delta[...]

    def tensors(self) -> dict[str, np.ndarray]:
        """What `FILE` holds."""
        return {"ids": np.asarray(self.ids, np.int32),
                "delta": np.asarray(self.delta[...], np.float32)}
