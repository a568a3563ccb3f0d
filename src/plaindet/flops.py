"""Counting FLOPs: ``torch.utils.flop_counter`` with the CPU attention kernels it leaves out.

PyTorch's counter knows the CUDA attention kernels but not the one
``F.scaled_dot_product_attention`` runs on CPU (``_scaled_dot_product_flash_attention_for_cpu``), so
on real CPU tensors it would count a ViT's attention as free. :func:`flop_counter` adds that kernel
and its backward with the counter's own formulas. The convention is the counter's: 2 FLOPs per
multiply-add of matrix products, convolutions and attention; element-wise operations, norms and
softmax are not counted (fvcore, and the GFLOPs quoted in most detection papers, count one
multiply-add as one flop: half of this number).
"""

from __future__ import annotations

from typing import Any

__all__ = ["flop_counter"]


def _cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter(**kwargs: Any):
    """A ``torch.utils.flop_counter.FlopCounterMode`` (``display=False`` unless given) that also counts
    the CPU attention kernel and its backward. Use as ``with flop_counter() as c: ...; c.get_total_flops()``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention}
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if backward is not None:
        mapping[backward] = _cpu_attention_backward
    kwargs.setdefault("display", False)
    return FlopCounterMode(custom_mapping=mapping, **kwargs)
