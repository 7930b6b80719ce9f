"""steering-vectors and repeng, driven from a SteeringSpec, for the benchmarks that time them
against our backends. (tests/test_peers.py checks that they compute what the spec says.)

Both add to the output of a decoder block (our ``resid_post`` of block L, the same stream as
``resid_pre`` of block L + 1), at every position of every call: neither reads the attention
mask (repeng masks left padding from ``position_ids`` when the block receives them). The
benchmarks steer unpadded batches, where all three agree.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import torch

from steering_backends import SteeringSpec

__all__ = ["PEERS", "installed_peers", "peer_steer"]

PEERS = {"steering-vectors": "steering_vectors", "repeng": "repeng"}  # distribution -> module


def installed_peers() -> list[str]:
    return [peer for peer, module in PEERS.items() if importlib.util.find_spec(module) is not None]


def _vectors_by_block(model: torch.nn.Module, specs: list[SteeringSpec]) -> dict[int, torch.Tensor]:
    """{block whose output is steered: coeff * vector}, for specs a peer can express: one [d_model]
    vector per block, added at its output from position 0."""
    n_layers = model.config.num_hidden_layers
    if not specs:
        raise ValueError("the peers are driven with at least one spec here; got none")
    vectors = {}
    for spec in specs:
        layer = spec.layer % n_layers
        if spec.per_position or spec.start != 0 or spec.site not in ("resid_pre", "resid_post"):
            raise ValueError(f"{spec!r}: a peer adds one [d_model] vector at a block output, from position 0")
        block = layer if spec.site == "resid_post" else layer - 1
        if block < 0:
            raise ValueError("resid_pre of block 0 is no block's output; the peers cannot steer it")
        if block in vectors:
            raise ValueError(f"two specs steer the output of block {block}; a peer takes one vector per block")
        vectors[block] = spec.coeff * spec.vector
    return vectors


@contextlib.contextmanager
def peer_steer(peer: str, model: torch.nn.Module, specs: list[SteeringSpec]) -> Iterator[torch.nn.Module]:
    """Steer ``model`` with ``specs`` through ``peer`` inside the block."""
    vectors = _vectors_by_block(model, specs)
    if peer == "steering-vectors":
        from steering_vectors import SteeringVector

        with SteeringVector(vectors, layer_type="decoder_block").apply(model):
            yield model
    elif peer == "repeng":
        from repeng import ControlModel

        control = ControlModel(model, list(vectors))  # swaps each block for its ControlModule until unwrap()
        try:
            control.set_raw_control({block: vector.to(model.dtype) for block, vector in vectors.items()})
            yield model
        finally:
            control.unwrap()
    else:
        raise ValueError(f"peer {peer!r} is unknown; allowed: {', '.join(PEERS)}")
