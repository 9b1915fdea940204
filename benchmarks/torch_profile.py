"""torchvision's step by op, in the categories of our step profiles (``profile_lib``).

Used by torch_detection.py when its spec asks for ``profile_steps`` (``step_profile.py --torch``):
the timed steps are followed by that many steps under ``torch.profiler`` (CPU activities, input
shapes recorded). Each profiled operator's self time goes to the category of the nearest of
itself and its callers that has one (``aten::convolution`` -> ``aten::mkldnn_convolution``
is all "conv forward"; under the autograd engine, the node's name counts, so a gradient
accumulation in ``ConvolutionBackward0`` is the convolution's backward); an operator called
from the autograd engine, or under ``Optimizer.step``, is backward work or the optimizer's.
torch runs an operator's intra-op threads inside the operator's span on the calling thread,
so self times add up to the step's wall time, as our categories do. Needs only torch.

torch's convolution backward computes the input and the kernel gradients in one operator
(``aten::convolution_backward``), so its category is both of ours together.
"""

from __future__ import annotations

import collections

_CONV_BACKWARD = "conv backward (input and kernel gradients)"  # torch computes both in one op

# Our categories (profile_lib.CATEGORIES) as both sides can be compared; ours map onto these
# with OURS_TO_COMMON.
COMMON = (
    "conv forward",
    _CONV_BACKWARD,
    "matmul forward (dense layers)",
    "matmul backward (dense layers)",
    "RoI ops forward",
    "RoI ops backward",
    "NMS and proposals",
    "optimizer update",
    "everything else",
)

# Our categories split the convolution's backward in two; those that both sides have map onto
# themselves, and the rest of ours (targets, losses, ...) fall into "everything else".
OURS_TO_COMMON = {category: category for category in COMMON} | {
    "conv input gradient": _CONV_BACKWARD,
    "conv kernel gradient": _CONV_BACKWARD,
}

_BACKWARD_ROOT = "autograd::engine::evaluate_function"
_OPTIMIZER_ROOT = "Optimizer."
_CONV_FORWARD = (
    "convolution", "_convolution", "mkldnn_convolution", "_slow_conv2d_forward", "cudnn_convolution"
)  # fmt: skip
_DENSE = ("addmm", "mm", "linear", "matmul", "bmm")


def _own_category(name: str) -> str | None:
    """The kind of work an operator's name says, or None (its caller decides)."""
    op = name.split("::", 1)[-1]
    if "roi_pool" in name or "roi_align" in name:
        return "RoI ops"
    if op in ("nms", "batched_nms", "topk", "sort"):
        return "NMS and proposals"
    if op == "convolution_backward":
        return _CONV_BACKWARD
    if op in _CONV_FORWARD:
        return "conv forward"
    if op in _DENSE:
        return "matmul"
    return None


def _backward_category(name: str) -> str | None:
    """The kind of work of an autograd node (``...evaluate_function: ConvolutionBackward0``)."""
    node = name.rsplit(":", 1)[-1].strip().lower()
    if "roi" in node:
        return "RoI ops"
    if node.startswith("convolution"):
        return _CONV_BACKWARD
    if node.startswith(_DENSE):
        return "matmul"
    return None


def categorize(event) -> str:
    """One of :data:`COMMON` for a profiler event (a ``FunctionEvent`` with ``cpu_parent``)."""
    own, backward, optimizer = None, False, False
    node = event
    while node is not None:
        if own is None:
            own = _own_category(node.name)
        if node.name.startswith(_BACKWARD_ROOT):
            backward = True
            own = own or _backward_category(node.name)
        optimizer = optimizer or node.name.startswith(_OPTIMIZER_ROOT)
        node = node.cpu_parent
    direction = "backward" if backward else "forward"
    if optimizer:
        return "optimizer update"
    if own == "RoI ops":
        return f"RoI ops {direction}"
    if own == "matmul":
        return f"matmul {direction} (dense layers)"
    if own == "conv forward" and backward:  # a convolution called by a backward formula
        return _CONV_BACKWARD
    return own or "everything else"


def summarize(events, *, steps: int, top: int = 15) -> dict:
    """``{"by_category": {category: ms per step}, "top": [(ms per step, name, shapes), ...]}``.

    ``events``: ``profiler.events()`` of ``steps`` profiled steps. ``top``: how many of the
    costliest (operator, input shapes) pairs by self time to list.
    """
    by_category = dict.fromkeys(COMMON, 0.0)
    by_op = collections.Counter()
    for event in events:
        ms = event.self_cpu_time_total / 1e3 / steps
        by_category[categorize(event)] += ms
        by_op[(event.name, str(event.input_shapes))] += ms
    costliest = [(ms, name, shapes) for (name, shapes), ms in by_op.most_common(top)]
    return {"by_category": by_category, "top": costliest}
