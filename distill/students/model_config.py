"""A student built from scratch: the `model_config` field (a mapping, a JSON string or a config path)."""

from __future__ import annotations

import json
import os
from typing import Any


def parse_model_config(value: Any, check_keys: bool = True) -> dict:
    """A student config given as a mapping, a JSON string, or a path to config.json / a model dir.

    Every key is checked against the model type's config class (`check_model_config_keys`), except in a
    config.json that transformers wrote (it records ``transformers_version``).
    """
    if isinstance(value, dict):
        config = dict(value)
    elif isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            config = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"model_config is not valid JSON: {e}") from None
    else:
        path = os.path.join(value, "config.json") if os.path.isdir(str(value)) else str(value)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model_config={value!r}: no such config file or model directory.")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    if not isinstance(config, dict):
        raise ValueError(f"model_config must be a mapping of config fields, not {type(config).__name__}.")
    if "model_type" not in config:
        raise ValueError("model_config needs a model_type, e.g. llama, gpt2, bert or vit.")
    if check_keys and "transformers_version" not in config:  # a file transformers wrote is taken as it is
        check_model_config_keys(config)
    return config


# Keys every config takes besides its class's own fields: handled by PretrainedConfig's kwargs (or by
# build_student: attn_implementation), properties (num_labels), and legacy names transformers converts
# (rope_theta / rope_scaling -> rope_parameters, torch_dtype -> dtype).
_COMMON_KEYS = frozenset(
    {
        "model_type",
        "num_labels",
        "attn_implementation",
        "experts_implementation",
        "torch_dtype",
        "output_attentions",
        "rope_theta",
        "rope_scaling",
        "_name_or_path",
        "name_or_path",
    }
)


def config_class_keys(model_type: str, where: str = "model_config") -> frozenset:
    """Every key a config of ``model_type`` understands: its class's (and base classes') constructor
    arguments, its default instance's attributes, its ``attribute_map`` aliases and `_COMMON_KEYS`.

    Raises:
        ValueError: ``model_type`` is not a transformers model type (with the closest ones named).
    """
    import inspect

    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from distill.utils.hints import did_you_mean

    try:
        config = AutoConfig.for_model(model_type)
    except (ValueError, KeyError):
        raise ValueError(
            f"{where}.model_type={model_type!r} is not a transformers model type"
            f"{did_you_mean(str(model_type), list(CONFIG_MAPPING.keys()))}; e.g. llama, gpt2, bert or vit."
        ) from None
    keys = set(_COMMON_KEYS) | set(config.to_dict()) | set(getattr(type(config), "attribute_map", {}) or {})
    for klass in type(config).__mro__:
        init = vars(klass).get("__init__")
        if init is not None and klass is not object:
            keys |= {
                name
                for name, p in inspect.signature(init).parameters.items()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"
            }
    return frozenset(keys)


def check_model_config_keys(config: dict, where: str = "model_config") -> None:
    """Refuse keys that the model type's config class does not know, with a did-you-mean hint.

    transformers keeps an unknown key as a plain attribute and ignores it: a typo such as ``hiden_size``
    would silently build a model of the default size.
    """
    from distill.utils.hints import did_you_mean

    if not isinstance(config, dict):
        raise ValueError(f"{where} must be a mapping of config fields, not {type(config).__name__}.")
    if "model_type" not in config:
        raise ValueError(f"{where} needs a model_type, e.g. llama, gpt2, bert or vit.")
    known = config_class_keys(config["model_type"], where)
    unknown = [key for key in config if key not in known]
    if unknown:
        hints = ", ".join(f"{key!r}{did_you_mean(str(key), known)}" for key in unknown)
        raise ValueError(
            f"{where}: unknown key(s) {hints} for model_type {config['model_type']!r}; transformers would ignore "
            f"them. Fix the spelling, or see {type_name(config['model_type'])}'s fields."
        )


def type_name(model_type: str) -> str:
    from transformers import AutoConfig

    return type(AutoConfig.for_model(model_type)).__name__
