"""Test setup: 8 fake CPU devices (for the sharding tests) before jax is imported."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The repository root, so that tests can import `configs` like the entry points do.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
