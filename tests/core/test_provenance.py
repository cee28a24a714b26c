"""``cxr.provenance``: the environment block recorded in runs, checkpoints and store manifests."""

from __future__ import annotations

import json
from importlib import metadata

from cxr.provenance import PACKAGES, environment


def test_the_environment_block_keeps_its_keys_and_reads_installed_versions():
    block = environment().to_dict()
    assert list(block) == ["time", "versions", "python", "platform", "cpu", "gpus"]
    assert list(block["versions"]) == list(PACKAGES) and block["versions"]["numpy"] == metadata.version("numpy")
    assert json.loads(json.dumps(block)) == block  # JSON-ready as written
    # a store's manifest: no time, so a resumed or parallel prepare writes the same bytes
    assert list(environment(timestamp=False).to_dict()) == ["versions", "python", "platform", "cpu", "gpus"]
    assert environment(timestamp=False) == environment(timestamp=False)
