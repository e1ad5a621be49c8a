"""YAML configs built from dicts: extra settings merged over rendered ones, dumped with a managed-file header."""

import copy

import yaml


def deep_merge(base: dict, extra: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def dump(config: dict) -> str:
    return "# Managed by matrix-deploy: edit the settings, not this file.\n" + yaml.safe_dump(
        config, default_flow_style=False, sort_keys=False
    )
