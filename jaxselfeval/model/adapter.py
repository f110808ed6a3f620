"""The interface of a weight adapter the Llama layer scan calls (e.g. `jaxselfeval.lora.LoRA`).

`Llama.lora` is None or an `Adapter`. The scan slices `stacked()` one layer at a time along its
leading [layers] axis; for each projection `name` the adapter covers, the layer adds
`delta(name, x, layer_slice[name], compute_dtype, in_dims)` to W x: the frozen weight W is never
changed or merged in training, so no [in, out] weight (or weight gradient) is formed.

An adapter may also cover some vocabulary rows (`vocab_rows`: the LM head's rows of a few token
ids): their f32 delta is added to those tokens' logits (the output side only, tied head or not).
"""

from __future__ import annotations

from flax import nnx


class Adapter(nnx.Module):
    """Base class: subclasses define `targets`, `stacked` and `delta`."""

    targets: tuple[str, ...] = ()

    def stacked(self) -> dict:
        """target -> pytree of arrays with a leading [layers] axis."""
        raise NotImplementedError

    def vocab_rows(self):
        """None, or (ids int32 [K], delta f32 [K, D]): added to those K rows of the LM head."""
        return None

    def delta(self, name: str, x, params, compute_dtype, in_dims: int):
        """x: [B, S, *in] (compute dtype); params: this layer's slice of stacked()[name].
        Returns f32 [B, S, *out], added to the output of x @ W."""
        raise NotImplementedError


def without_adapter(model):
    """The same model with its adapter left out, weights shared (nothing copied): the frozen base
    a KL term compares with. A model without an adapter is returned as is."""
    if getattr(model, "lora", None) is None:
        return model
    graphdef, state = nnx.split(model)
    base = nnx.merge(graphdef, state)
    base.lora = None
    return base
