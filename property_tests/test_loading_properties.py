"""W6: whatever happens to saved bytes, a load either refuses them and changes nothing, or
(when the damage left the data itself intact) loads exactly what was saved."""

import numpy
from hypothesis import given
from hypothesis import strategies as st

from tests.test_loading import assert_same_state, state_of

from .strategies import saved_models

DAMAGES = st.sampled_from(["truncate", "flip", "splice"])


def damaged(data: bytes, other: bytes, damage: str, where: float, bit: int) -> bytes:
    cut = int(where * (len(data) - 1))
    if damage == "truncate":
        return data[:cut]
    if damage == "splice":  # another model's bytes from the cut on
        return data[:cut] + other[cut:] if other[cut:] != data[cut:] else data[:cut]
    spoiled = bytearray(data)
    spoiled[cut] ^= 1 << bit
    return bytes(spoiled)


@given(case=saved_models(), damage=DAMAGES, where=st.floats(0, 1), bit=st.integers(0, 7))
def test_damaged_bytes_are_refused_or_load_what_was_saved(case, damage, where, bit):
    """W6: truncated, flipped or spliced bytes of any nesting of the four combinators raise
    ValueError and leave the model as it was (name, dims, params, buffers, attrs); a load that
    succeeds gives exactly the predictions of the model whose bytes it read."""
    model, X, build = case
    data = model.to_bytes()
    other = build(1)
    other.initialize(X=X)
    target = build(2)
    target.initialize(X=X)
    target.to_bytes()  # settle pending state, as a save would
    before, expected = state_of(target), target.predict(X)
    try:
        target.from_bytes(damaged(data, other.to_bytes(), damage, where, bit))
    except ValueError:
        assert_same_state(before, state_of(target))
        numpy.testing.assert_array_equal(target.predict(X), expected)
    else:  # the damage left a whole message: the saved one, or all of the other model's
        loaded = target.predict(X)
        assert any(numpy.array_equal(loaded, m.predict(X)) for m in (model, other))
