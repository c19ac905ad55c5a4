"""Hypothesis profiles: `ci` (bounded, derandomized, no deadline) and `dev` (more examples)."""

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=30,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=300, deadline=None, print_blob=True)
settings.load_profile("ci")
torch.set_num_threads(1)  # small tensors: threads only add noise and contention
