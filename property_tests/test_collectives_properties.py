"""Bucketing of gradients for the all-reduce (M1): every array once, in order, one dtype each."""

import numpy
import torch
from hypothesis import given
from hypothesis import strategies as st

from property_tests.strategies import gradient_arrays
from torchlayers._collectives import buckets, flatten, unflatten


@given(arrays=gradient_arrays(), bucket_bytes=st.integers(1, 512))
def test_buckets_hold_every_array_once_in_order(arrays, bucket_bytes):
    """M1, P9: the buckets hold each array exactly once, in their order within each dtype, one
    dtype per bucket, and every bucket but the last of its dtype reaches `bucket_bytes`; so the
    bytes all-reduced are the gradient bytes, no more."""
    found = buckets(arrays, bucket_bytes)
    assert sum(a.nbytes for b in found for a in b) == sum(a.nbytes for a in arrays)
    for dtype in ("float32", "float64"):
        mine = [b for b in found if str(b[0].dtype) == dtype]
        assert all(str(a.dtype) == dtype for b in mine for a in b)
        assert [id(a) for b in mine for a in b] == [id(a) for a in arrays if a.dtype == dtype]
        assert all(sum(a.nbytes for a in b) >= bucket_bytes for b in mine[:-1])


@given(arrays=gradient_arrays())
def test_flatten_then_unflatten_writes_back_in_place(arrays):
    """M1: a bucket's flat buffer, changed, is copied back into the very arrays it came from."""
    bucket = [a for a in arrays if a.dtype == arrays[0].dtype]
    before = [a.copy() for a in bucket]
    flat = torch.from_numpy(flatten(bucket))
    assert flat.numel() == sum(a.size for a in bucket)
    flat.mul_(2)
    unflatten(flat, bucket)
    for a, b in zip(bucket, before):
        numpy.testing.assert_array_equal(a, b * 2)
