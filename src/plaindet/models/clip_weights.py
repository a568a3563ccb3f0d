"""Loading CLIP image-encoder weights into :class:`plaindet.models.vit.ViT`.

Sources (:func:`read_state_dict`): a ``.safetensors`` file, a ``.bin``/``.pt``/``.pth``/``.ckpt`` file
holding tensors only (read with ``torch.load(weights_only=True)``: nothing that needs Python code to
unpickle is ever loaded), an in-memory state dict, or a Hugging Face Hub repository id such as
``openai/clip-vit-base-patch16`` or ``timm/vit_base_patch16_clip_224.openai``.

Key layouts, detected from the keys (:func:`convert_clip_state_dict`):

- ``openai``: OpenAI CLIP / open_clip, ``visual.*`` of a full CLIP model or a bare visual tower
  (``conv1.weight``, ...). These are our names except ``attn.in_proj_weight``/``in_proj_bias``, which
  become ``attn.in_proj.weight``/``bias`` (our fused projection is an ``nn.Linear``); ``proj`` is dropped.
- ``transformers``: Hugging Face ``CLIPModel`` / ``CLIPVisionModel`` (``vision_model.*``, or unprefixed
  ``embeddings.*`` as transformers 5 names ``CLIPVisionModel``). Separate q/k/v projections are fused;
  ``visual_projection`` and the text tower are dropped.
- ``timm``: timm's CLIP ViTs (``vit_base_patch16_clip_224.openai`` ...): ``patch_embed.proj``,
  ``cls_token``, ``pos_embed``, ``norm_pre``, ``blocks.{i}``, ``norm``; ``head`` is dropped.

A checkpoint pretrained at another resolution (e.g. 336 px) is fine: its position embedding is
resized bicubically to the model's ``img_size`` grid. Width, depth or patch size mismatches, and any
missing or unexpected key after the known-dropped ones are removed, raise :class:`ClipWeightsError`.
The number of heads can't be read from the weights: it must match the checkpoint's (``width // 64``
for all OpenAI and open_clip ViTs).
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from plaindet.models.vit import ViT, resize_pos_embed

__all__ = ["ClipWeightsError", "convert_clip_state_dict", "load_clip_weights", "read_state_dict"]

# Files tried, in order, when the source is a Hub repository id. Safetensors first: no pickle at all.
HUB_FILENAMES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_TORCH_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt"}


class ClipWeightsError(ValueError):
    """Weights that can't be read safely, or that don't fit the model. The message says which and why."""


# ----------------------------------------------------------------------------------------------------------------------
# Reading


def read_state_dict(source: str | Path | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors of a checkpoint, with the keys as stored (no renaming).

    Args:
        source: a path to a ``.safetensors`` / ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` file, a directory
            holding one of :data:`HUB_FILENAMES` (a downloaded Hub snapshot), a mapping of names to tensors,
            or a Hub repository id (``"org/name"``, optionally ``"hf-hub:org/name"``).

    A training checkpoint that nests the weights under ``"state_dict"`` or ``"model"`` is unwrapped, and
    a ``module.`` prefix (DistributedDataParallel) is removed.
    """
    if isinstance(source, Mapping):
        return _unwrap(dict(source), "the given state dict")
    path = Path(source)
    if path.is_dir():  # a downloaded Hub snapshot or a clone of the repository
        path = _weights_in_dir(path)
    if path.exists():
        return _unwrap(_read_file(path), str(path))
    repo_id = str(source).removeprefix("hf-hub:")
    if _looks_like_repo_id(repo_id):
        path = _download(repo_id)
        return _unwrap(_read_file(path), f"{repo_id} ({path.name})")
    raise FileNotFoundError(f"{source}: no such file, nor a Hugging Face Hub id like 'openai/clip-vit-base-patch16'")


def _looks_like_repo_id(name: str) -> bool:
    weight_suffixes = {".safetensors", *_TORCH_SUFFIXES}
    return re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and Path(name).suffix not in weight_suffixes


def _weights_in_dir(directory: Path) -> Path:
    for name in HUB_FILENAMES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory}: a directory without any of the weight files {', '.join(HUB_FILENAMES)}")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _read_file(path: Path) -> dict[str, Tensor]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ClipWeightsError(f"{path}: not a readable safetensors file ({e})") from None
    if suffix not in _TORCH_SUFFIXES:
        raise ClipWeightsError(f"{path}: unknown weights format {suffix!r}; expected .safetensors, .bin, .pt or .pth")
    if _is_torchscript(path):
        # OpenAI's original ViT-B-16.pt etc. are TorchScript programs, not state dicts.
        raise ClipWeightsError(
            f"{path} is a TorchScript archive (like OpenAI's original ViT-*.pt files), which we don't load. Use "
            "the same weights as safetensors from the Hugging Face Hub, e.g. 'openai/clip-vit-base-patch16' or "
            "'timm/vit_base_patch16_clip_224.openai'."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ClipWeightsError(
            f"{path} contains pickled Python objects other than tensors, and loading it would run code from the "
            "file, so it is refused. Re-save only the weights where you trust the file: "
            "torch.save(checkpoint_state_dict, path) or safetensors.torch.save_file(state_dict, path)."
        ) from e
    except (RuntimeError, OSError, EOFError) as e:  # truncated or not a torch file at all
        raise ClipWeightsError(f"{path}: not a readable PyTorch weights file ({e})") from None


def _unwrap(sd: dict, where: str) -> dict[str, Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(sd.get(key), Mapping):
            sd = dict(sd[key])
            break
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    not_tensors = sorted(k for k, v in sd.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise ClipWeightsError(f"{where}: expected a state dict of tensors; not tensors: {_names(not_tensors)}")
    return sd


def _download(repo_id: str) -> Path:
    """The first of :data:`HUB_FILENAMES` that the repository has, from the local cache or the Hub."""
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # a core dependency, but a broken environment deserves a clear message
        raise ImportError("loading weights by Hub id needs huggingface_hub: pip install huggingface_hub") from e

    offline = False
    for filename in HUB_FILENAMES:
        try:
            # Once the Hub proved unreachable, only look in the cache: each online try costs retries.
            return Path(hf_hub_download(repo_id, filename, local_files_only=offline))
        except LocalEntryNotFoundError:  # not cached and no connection (subclass of EntryNotFoundError)
            offline = True
        except EntryNotFoundError:  # the repository has no such file: try the next name
            continue
        except RepositoryNotFoundError as e:
            raise ClipWeightsError(f"{repo_id!r}: no such repository on the Hugging Face Hub (or it is private)") from e
    if offline:
        raise ClipWeightsError(
            f"Can't download the weights of {repo_id!r}: the Hugging Face Hub is unreachable and they are not in the "
            f"local cache ({constants.HF_HUB_CACHE}). On a machine with internet, download one of "
            f"{', '.join(HUB_FILENAMES)} from https://huggingface.co/{repo_id} (for instance "
            f"`hf download {repo_id} {HUB_FILENAMES[0]}`, which fills the cache; copy the cache over), "
            "or pass the downloaded file's local path (or its folder) instead of the Hub id."
        )
    raise ClipWeightsError(f"{repo_id!r} has none of the weight files {', '.join(HUB_FILENAMES)}")


# ----------------------------------------------------------------------------------------------------------------------
# Converting to our names

# Rules are (pattern, replacement) tried in order against the whole key; the first full match wins.
_OPENAI_RULES = [
    (r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", r"transformer.resblocks.\1.attn.in_proj.\2"),
]
_TRANSFORMERS_RULES = [
    (r"embeddings\.patch_embedding\.weight", "conv1.weight"),
    (r"embeddings\.class_embedding", "class_embedding"),
    (r"embeddings\.position_embedding\.weight", "positional_embedding"),
    (r"pre_layrnorm\.(weight|bias)", r"ln_pre.\1"),  # sic: transformers' spelling
    (r"post_layernorm\.(weight|bias)", r"ln_post.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", r"transformer.resblocks.\1.attn.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"transformer.resblocks.\1.attn.out_proj.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)", r"transformer.resblocks.\1.ln_\2.\3"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_fc.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_proj.\2"),
]
_TIMM_RULES = [
    (r"patch_embed\.proj\.(weight|bias)", r"conv1.\1"),
    (r"cls_token", "class_embedding"),
    (r"pos_embed", "positional_embedding"),
    (r"norm_pre\.(weight|bias)", r"ln_pre.\1"),
    (r"norm\.(weight|bias)", r"ln_post.\1"),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"transformer.resblocks.\1.ln_\2.\3"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"transformer.resblocks.\1.attn.in_proj.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"transformer.resblocks.\1.attn.out_proj.\2"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_fc.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_proj.\2"),
]
# Keys that exist in these checkpoints and that the backbone doesn't use (after prefix removal).
_DROPPED = {
    "openai": re.compile(r"proj"),  # image -> joint embedding projection
    "transformers": re.compile(r"embeddings\.position_ids"),  # an index buffer in older checkpoints
    "timm": re.compile(r"head\.(weight|bias)"),  # the projection again, as a classifier head
}


def _detect_layout(sd: Mapping[str, Tensor]) -> tuple[str, str]:
    """``(layout, prefix of the image tower's keys)``; everything outside the prefix is ignored."""
    if any(k.startswith("visual.") for k in sd):
        return "openai", "visual."
    if any(k.startswith("vision_model.") for k in sd):
        return "transformers", "vision_model."
    if "embeddings.patch_embedding.weight" in sd:
        return "transformers", ""
    if "conv1.weight" in sd:
        return "openai", ""
    if "patch_embed.proj.weight" in sd:
        return "timm", ""
    raise ClipWeightsError(
        "unrecognized checkpoint layout: expected OpenAI/open_clip (visual.conv1.weight), Hugging Face "
        "transformers (vision_model.embeddings.patch_embedding.weight) or timm (patch_embed.proj.weight) keys; "
        f"the first keys are {_names(sorted(sd), limit=8)}"
    )


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        new, n = re.subn(f"^{pattern}$", repl, key)
        if n:
            return new
    return key  # left for the unexpected-keys report


def _fuse_qkv(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """``...attn.{q,k,v}_proj.{weight,bias}`` -> ``...attn.in_proj.{weight,bias}`` (q, k, v stacked)."""
    out = dict(sd)
    for key in sd:
        m = re.fullmatch(r"(.*\.attn\.)q_proj\.(weight|bias)", key)
        parts = [f"{m[1]}{c}_proj.{m[2]}" for c in "qkv"] if m else []
        if parts and all(p in out for p in parts):  # an incomplete triple is left for the key report
            out[f"{m[1]}in_proj.{m[2]}"] = torch.cat([out.pop(p) for p in parts])
    return out


def convert_clip_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Rename a CLIP image-encoder state dict to :class:`~plaindet.models.vit.ViT`'s names.

    Returns:
        ``(state_dict, layout)`` with ``layout`` one of ``"openai"``, ``"transformers"``, ``"timm"``.
        Known-unused keys (text tower, projections, heads) are dropped; unknown keys are kept as they
        are so that :func:`load_clip_weights` can report them. ``class_embedding`` is ``(width,)`` and
        ``positional_embedding`` ``(1 + grid * grid, width)`` as in OpenAI's layout, at the
        checkpoint's own grid.
    """
    layout, prefix = _detect_layout(state_dict)
    sd = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    sd = {k: v for k, v in sd.items() if not _DROPPED[layout].fullmatch(k)}
    if layout == "openai":
        sd = {_rename(k, _OPENAI_RULES): v for k, v in sd.items()}
    elif layout == "transformers":
        sd = _fuse_qkv({_rename(k, _TRANSFORMERS_RULES): v for k, v in sd.items()})
    elif layout == "timm":
        sd = {_rename(k, _TIMM_RULES): v for k, v in sd.items()}
        # timm keeps batch dims: cls_token (1, 1, w), pos_embed (1, 1 + n, w)
        if "class_embedding" in sd:
            sd["class_embedding"] = sd["class_embedding"].reshape(-1)
        if "positional_embedding" in sd and sd["positional_embedding"].dim() == 3:
            sd["positional_embedding"] = sd["positional_embedding"][0]
    return sd, layout


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def load_clip_weights(model: ViT, source: str | Path | Mapping[str, Tensor]) -> None:
    """Load CLIP image-encoder weights into ``model`` in place.

    Args:
        model: the backbone; its ``img_size`` sets the grid the position embedding is resized to.
        source: see :func:`read_state_dict`.

    Raises:
        ClipWeightsError: the checkpoint can't be read safely, its layout is unknown, its width, depth or
            patch size differ from the model's, or keys are missing or unexpected (all listed).
    """
    sd, layout = convert_clip_state_dict(read_state_dict(source))
    _check_architecture(sd, model, layout)
    pos = sd.get("positional_embedding")
    if pos is not None and pos.shape[0] != model.positional_embedding.shape[0]:
        sd["positional_embedding"] = _resize_checkpoint_pos(pos, model.grid_size)

    ours = model.state_dict()
    missing, unexpected = sorted(ours.keys() - sd.keys()), sorted(sd.keys() - ours.keys())
    if missing or unexpected:
        raise ClipWeightsError(
            f"checkpoint ({layout} layout) doesn't fit the ViT: missing keys {_names(missing)}; "
            f"unexpected keys {_names(unexpected)}"
        )
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(ours[k].shape)})" for k, v in sd.items() if v.shape != ours[k].shape]
    if wrong:
        raise ClipWeightsError(f"checkpoint ({layout} layout) has tensors of the wrong shape: {_names(wrong)}")
    model.load_state_dict(sd)


def _check_architecture(sd: Mapping[str, Tensor], model: ViT, layout: str) -> None:
    """Compare width, depth and patch size first: a clearer message than a hundred shape mismatches."""
    conv = sd.get("conv1.weight")
    if conv is None:
        return  # reported as a missing key
    blocks = {int(m[1]) for k in sd if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
    ckpt = (conv.shape[0], len(blocks), conv.shape[-1])
    ours = (model.out_channels, model.depth, model.patch_size)
    if ckpt != ours:
        raise ClipWeightsError(
            f"checkpoint ({layout} layout) is a ViT with width {ckpt[0]}, depth {ckpt[1]}, patch size {ckpt[2]}, "
            f"but the model has width {ours[0]}, depth {ours[1]}, patch size {ours[2]}"
        )


def _resize_checkpoint_pos(pos: Tensor, grid: int) -> Tensor:
    """``(1 + g * g, w)`` position embedding of another pretraining size -> ``(1 + grid * grid, w)``."""
    g = math.isqrt(pos.shape[0] - 1)
    if g * g != pos.shape[0] - 1:
        raise ClipWeightsError(f"positional_embedding {tuple(pos.shape)} is not a class token plus a square grid")
    patch_pos = resize_pos_embed(pos[1:].reshape(g, g, -1), (grid, grid))
    return torch.cat([pos[:1], patch_pos.reshape(grid * grid, -1)])


def _names(names: list[str], limit: int = 20) -> str:
    if not names:
        return "(none)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")
