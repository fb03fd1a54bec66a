"""Peak device memory of a training step, counted without the device.

The number we predict is what `torch.cuda.max_memory_allocated` reports: the largest sum, over the step, of the
live blocks of the CUDA caching allocator. A block holds one tensor storage, rounded up to a multiple of 512
bytes (`kMinBlockSize` in c10/cuda/CUDACachingAllocator.cpp); an empty storage takes no block. So we run the
real step (forward, backward, optimizer step) on PyTorch's ``meta`` device, where every op computes shapes
and no data, and count storages:

- `LiveMemoryCounter` is a `TorchDispatchMode`. It sits below autograd, so it sees every aten op: the forward,
  the backward (the autograd engine runs CPU and meta backward on the calling thread, with the dispatch modes
  of the caller), the recomputation of `torch.utils.checkpoint`, the optimizer step. Each output storage is
  counted once — views, in-place ops and aliases share a storage — until Python frees it (a weakref callback
  on the storage object, which PyTorch keeps alive exactly as long as the storage). Labels say what a storage
  is (weights, gradients, optimizer state; all else is activations) for a breakdown at the peak.
  The same counter runs on real CPU tensors: a meta run and a CPU run of the same step must count the same
  bytes, which is how the method is tested.
- Where meta differs from CUDA, three pieces make it behave like CUDA:
  `device_kernels("cuda")` routes attention and dropout to the kernels CUDA runs (SDPA's fused attention,
  the fused dropout with its bool mask); `cuda_workspace` adds the temporaries a CUDA kernel allocates and
  frees inside one op, which no mode can see (flash-attention backward's fp32 accumulator, the dequantized
  weight of a bitsandbytes 4-bit matmul); `params4bit_on_meta` and `page_optimizer_state` make
  bitsandbytes' NF4 weights and paged optimizer run on meta as on CUDA.

Typical use (model, optimizer and batch built under ``with torch.device("meta")``)::

    with device_kernels("cuda"), LiveMemoryCounter("meta", workspace=cuda_workspace) as counter:
        counter.track_module(model)
        counter.track_gradients(model.parameters())
        for _ in range(2):  # the second step holds the optimizer state through forward and backward
            loss_fn(model(batch)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            counter.track_optimizer(optimizer)
    counter.peak, counter.peak_breakdown

Not modelled, so a real `max_memory_allocated` can be higher: cuBLAS/cuBLASLt workspaces (taken once per
handle from the caching allocator); cuDNN convolution workspaces; temporaries inside CUDA kernels other than
those `cuda_workspace` models (e.g. the memory-efficient attention backward's workspace); a cached block
larger than the request, handed out whole instead of split (the allocator splits a large block only when
more than 1 MiB would remain); `PYTORCH_CUDA_ALLOC_CONF=roundup_power2_divisions`, which rounds more coarsely.
`torch.autocast` does nothing on meta tensors (they have no autocast dispatch key), so an autocast
mixed-precision step is not reproduced by running it under autocast here.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass

BLOCK_BYTES = 512  # c10/cuda/CUDACachingAllocator.cpp kMinBlockSize: every block is a multiple of it

# Labels of the breakdown. Everything created during the step and never labelled is an activation (saved
# for backward) or a temporary; the counter cannot tell those apart, and does not need to.
ACTIVATIONS = "activations"
WEIGHTS = "weights"  # frozen parameters, buffers, bitsandbytes quantization state
TRAINABLE = "trainable"  # parameters with requires_grad
GRADIENTS = "gradients"  # `.grad` of parameters
OPTIMIZER = "optimizer"  # optimizer state on the device
UNTRACKED = "untracked inputs"  # device storages an op read that were neither tracked nor made in the mode
WORKSPACE = "kernel workspace"  # temporaries inside one CUDA kernel (`cuda_workspace`), at the peak only
# Storages that exist but that `max_memory_allocated` does not count: reported beside the peak, not in it.
PAGED = "paged optimizer state (unified memory)"  # bitsandbytes' cudaMallocManaged buffers
HOST = "host"  # tensors a CPU run holds that a CUDA run keeps on the host (e.g. AdamW's `step` counters)
OUTSIDE_ALLOCATOR = (PAGED, HOST)


def allocator_bytes(nbytes: int) -> int:
    """Bytes the CUDA caching allocator counts as allocated for a storage of `nbytes` bytes (0 stays 0)."""
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    return -(-nbytes // BLOCK_BYTES) * BLOCK_BYTES


class _Storage:
    """One live storage: its counted bytes, its label, and when it was born (for the peak breakdown)."""

    __slots__ = ("nbytes", "label", "born", "ref")

    def __init__(self, nbytes: int, label: str, born: int) -> None:
        self.nbytes = nbytes
        self.label = label
        self.born = born
        self.ref: weakref.ref | None = None


class LiveMemoryCounter(TorchDispatchMode):
    r"""Counts the live tensor storages of one device type, as the CUDA caching allocator would hold them.

    Storages are counted when an op under the mode creates them (factories such as `torch.empty` included),
    when `track` registers them, or — labelled `UNTRACKED` — when an op reads a storage never seen before
    (forgot to `track_module`? the breakdown shows it). Each storage counts once, rounded up by
    `allocator_bytes`, until it is freed.

    Args:
        device_type (`str`): "meta" to model a CUDA device, or "cpu" to count a real CPU run. Tensors on
            other devices are ignored (on meta, AdamW's `step` counters are CPU tensors: on CUDA too).
        workspace (`Callable`, *optional*): `workspace(func, args, kwargs, out) -> int`, the bytes the real
            kernel of `func` allocates and frees inside the op; they count towards the peak at that op.
            `cuda_workspace` models CUDA; None for a CPU run.
        outside_allocator (`tuple[str]`): labels whose storages exist but are not in `current`/`peak`
            (default: `PAGED`, `HOST`).

    On meta, an op whose real kernel allocates a larger storage than torch's meta kernel gives it that
    storage (`F.mse_loss` with a reduction keeps its elementwise size in the 0-dim loss, on CPU and CUDA).

    Read `current`, `peak` (bytes), `breakdown()` (bytes per label now) and `peak_breakdown` (bytes per
    label at the peak; labels outside the allocator are listed too, beside the peak). A label given after
    the peak (a gradient labelled when autograd accumulates it) is applied to the peak breakdown as well:
    it tells what the storages alive at the peak turned out to be.
    """

    def __init__(
        self,
        device_type: str = "meta",
        *,
        workspace: Callable[..., int] | None = None,
        outside_allocator: tuple[str, ...] = OUTSIDE_ALLOCATOR,
    ) -> None:
        super().__init__()
        if torch.device(device_type).type != device_type or device_type not in ("meta", "cpu", "cuda"):
            raise ValueError(f"device_type must be 'meta', 'cpu' or 'cuda', got {device_type!r}")
        self.device_type = device_type
        self.workspace = workspace
        self.outside_allocator = frozenset(outside_allocator)
        self._storages: dict[int, _Storage] = {}  # id(storage object) -> record; removed when it dies
        self._by_label: dict[str, int] = defaultdict(int)
        self._current = 0
        self._peak = 0
        self._peak_breakdown: dict[str, int] = {}
        self._births = 0  # storages counted so far; a storage born <= _peak_birth was alive at the peak
        self._peak_birth = 0
        self._peak_is_now = True  # nothing allocated or freed since `reset_peak`: a relabel may move the peak
        self._labels: list[str] = []  # `labelled` stack
        self._untracked: list[str] = []  # `untracked_as` stack
        self._hooks: list = []

    # ------------------------------------------------------------------ readouts
    @property
    def current(self) -> int:
        """Bytes in the allocator now."""
        return self._current

    @property
    def peak(self) -> int:
        """The most bytes in the allocator at once since construction or `reset_peak` (workspaces included)."""
        return self._peak

    @property
    def peak_breakdown(self) -> dict[str, int]:
        """Bytes per label at the peak (`WORKSPACE`: the op's temporaries; outside-allocator labels beside)."""
        return dict(self._peak_breakdown)

    def breakdown(self) -> dict[str, int]:
        """Bytes per label now, outside-allocator labels included."""
        return {k: v for k, v in self._by_label.items() if v}

    def reset_peak(self) -> None:
        """Start a new peak from what is alive now (as `torch.cuda.reset_peak_memory_stats`)."""
        self._peak = self._current
        self._peak_breakdown = self.breakdown()
        self._peak_birth = self._births
        self._peak_is_now = True

    # ------------------------------------------------------------------ registering storages
    def track(self, tensors: Any, label: str) -> None:
        """Count the storages of `tensors` (a tensor or any nest of lists/tuples/dicts of them) as `label`.

        Storages already counted are relabelled. A storage alive at the peak cannot move into or out of the
        allocator (e.g. to `PAGED` or `HOST`) — the peak would be wrong — except right after `reset_peak`;
        label it at creation with `labelled` instead.
        """
        for t in self._device_tensors(tensors):
            record = self._storages.get(id(t.untyped_storage()))
            if record is None:
                self._add(t, label)
            elif record.label != label:
                self._relabel(record, label)
        self._update_peak()

    def track_module(self, module: nn.Module) -> None:
        """Track a model: trainable parameters as `TRAINABLE`, frozen ones and buffers as `WEIGHTS`, and the
        quantization state of bitsandbytes 4-bit weights (absmax, code, nested state) as `WEIGHTS`."""
        for p in module.parameters():
            self.track(p, TRAINABLE if p.requires_grad else WEIGHTS)
            self.track(_quant_state_tensors(getattr(p, "quant_state", None)), WEIGHTS)
        for b in module.buffers():
            self.track(b, WEIGHTS)

    def track_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Label the optimizer's state on the device `OPTIMIZER` (storages outside the allocator keep their
        label). Call it after the first `step`, which creates the state."""
        for t in self._device_tensors(list(optimizer.state.values())):
            record = self._storages.get(id(t.untyped_storage()))
            if record is None or record.label not in self.outside_allocator:
                self.track(t, OPTIMIZER)

    def track_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Label each parameter's `.grad` `GRADIENTS` as soon as autograd accumulates it.

        Uses `register_post_accumulate_grad_hook`, which runs right after the gradient lands in `.grad` —
        during backward, where the peak usually is, rather than after it. The hooks are removed when the
        counter's `with` block exits.
        """
        for p in params:
            if not p.requires_grad:
                continue
            if p.grad is not None:
                self.track(p.grad, GRADIENTS)
            self._hooks.append(p.register_post_accumulate_grad_hook(lambda p: self.track(p.grad, GRADIENTS)))

    @contextlib.contextmanager
    def labelled(self, label: str) -> Iterator[None]:
        """Storages created inside this block are labelled `label` from birth (e.g. `PAGED` buffers)."""
        self._labels.append(label)
        try:
            yield
        finally:
            self._labels.pop()

    @contextlib.contextmanager
    def untracked_as(self, label: str) -> Iterator[None]:
        """Storages that ops inside this block read without having seen them before get `label` (instead of
        `UNTRACKED`). For a CPU reference run: `with counter.untracked_as(HOST): optimizer.step()` keeps
        AdamW's `step` counters — made from Python data, which no mode sees, and on the host in a CUDA run —
        out of the count."""
        self._untracked.append(label)
        try:
            yield
        finally:
            self._untracked.pop()

    # ------------------------------------------------------------------ the mode
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in self._device_tensors((args, kwargs)):
            if id(t.untyped_storage()) not in self._storages:
                self._add(t, self._untracked[-1] if self._untracked else UNTRACKED)
        out = func(*args, **kwargs)
        if self.device_type == "meta":
            _allocate_as_real_kernels(func, args, out)
        label = self._labels[-1] if self._labels else ACTIVATIONS
        for t in self._device_tensors(out):
            record = self._storages.get(id(t.untyped_storage()))
            if record is None:
                self._add(t, label)
            else:  # an existing storage: in-place op, view, or out= (which may have resized it)
                self._resize(record, t.untyped_storage())
        self._update_peak()
        if self.workspace is not None:
            extra = self.workspace(func, args, kwargs, out)
            if extra:
                self._update_peak(extra)
        return out

    def __exit__(self, *exc):
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        return super().__exit__(*exc)

    # ------------------------------------------------------------------ bookkeeping
    def _device_tensors(self, tree: Any) -> Iterator[torch.Tensor]:
        stack = _tensors_in(tree, [])
        while stack:
            t = stack.pop()
            if type(t) is not torch.Tensor and is_traceable_wrapper_subclass(t):
                stack.extend(getattr(t, name) for name in t.__tensor_flatten__()[0])
                continue
            if t.device.type != self.device_type:
                continue
            if t.layout != torch.strided:
                raise ValueError(f"LiveMemoryCounter counts strided tensors only, got a {t.layout} tensor")
            yield t

    def _add(self, t: torch.Tensor, label: str) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        self._births += 1
        record = _Storage(allocator_bytes(storage.nbytes()), label, self._births)
        record.ref = weakref.ref(storage, lambda _, key=key: self._free(key))
        self._storages[key] = record
        self._by_label[label] += record.nbytes
        if label not in self.outside_allocator:
            self._current += record.nbytes
            self._peak_is_now = False

    def _free(self, key: int) -> None:
        record = self._storages.pop(key, None)
        if record is None:
            return
        self._by_label[record.label] -= record.nbytes
        if record.label not in self.outside_allocator:
            self._current -= record.nbytes
            self._peak_is_now = False

    def _resize(self, record: _Storage, storage: torch.UntypedStorage) -> None:
        nbytes = allocator_bytes(storage.nbytes())
        if nbytes == record.nbytes:
            return
        change, record.nbytes = nbytes - record.nbytes, nbytes
        self._by_label[record.label] += change
        if record.label not in self.outside_allocator:
            self._current += change
            self._peak_is_now = False

    def _relabel(self, record: _Storage, label: str) -> None:
        was_outside, is_outside = record.label in self.outside_allocator, label in self.outside_allocator
        if record.born <= self._peak_birth and not self._peak_is_now:  # alive at the peak: it was this all along
            if was_outside != is_outside:
                raise ValueError(
                    f"a storage labelled {record.label!r} was alive at the peak and cannot move to {label!r} "
                    f"(into or out of the allocator) afterwards; create it inside `counter.labelled({label!r})`"
                )
            left = self._peak_breakdown.get(record.label, 0) - record.nbytes
            if left > 0:
                self._peak_breakdown[record.label] = left
            else:
                self._peak_breakdown.pop(record.label, None)
            self._peak_breakdown[label] = self._peak_breakdown.get(label, 0) + record.nbytes
        self._by_label[record.label] -= record.nbytes
        self._by_label[label] += record.nbytes
        if was_outside != is_outside:
            self._current += -record.nbytes if is_outside else record.nbytes
        record.label = label
        if self._peak_is_now:
            self.reset_peak()

    def _update_peak(self, workspace: int = 0) -> None:
        total = self._current + workspace
        if total > self._peak:
            self._peak = total
            self._peak_breakdown = self.breakdown()
            if workspace:
                self._peak_breakdown[WORKSPACE] = workspace
            self._peak_birth = self._births


def _tensors_in(tree: Any, found: list) -> list[torch.Tensor]:
    # The tensors of op arguments and outputs (nests of tuples, lists, dicts); a pytree walk costs more.
    if isinstance(tree, torch.Tensor):
        found.append(tree)
    elif isinstance(tree, (tuple, list)):
        for x in tree:
            _tensors_in(x, found)
    elif isinstance(tree, dict):
        for x in tree.values():
            _tensors_in(x, found)
    return found


# aten's structured kernels of these losses, with a reduction, compute the elementwise loss into their output
# and then resize it to 0-dim (aten/src/ATen/native/Loss.cpp): the output's storage keeps the elementwise size
# (resize_ never shrinks a storage), on CPU and CUDA alike. torch's Python meta kernels (torch/_decomp) allocate
# a 0-dim storage instead; the training loss (`F.mse_loss`) would be undercounted for as long as it lives.
_REDUCED_LOSSES = ("aten::mse_loss", "aten::smooth_l1_loss")


def _allocate_as_real_kernels(func, args, out) -> None:
    """Give a meta op's output the storage the real kernel allocates, where torch's meta kernel differs."""
    if func.name() in _REDUCED_LOSSES and func._overloadname == "default":
        reduction = args[2] if len(args) > 2 else 1  # the schema's default: mean
        if reduction != 0:
            numel = torch.broadcast_shapes(args[0].shape, args[1].shape).numel()
            if numel * out.element_size() > out.untyped_storage().nbytes():
                out.untyped_storage().resize_(numel * out.element_size())


def _quant_state_tensors(state: Any) -> list[torch.Tensor]:
    """The tensors of a bitsandbytes `QuantState` (absmax, code, offset, and those of a nested `state2`)."""
    if state is None:
        return []
    out = []
    for value in vars(state).values():
        if isinstance(value, torch.Tensor):
            out.append(value)
        elif type(value) is type(state):  # state2: the quantized absmax's own state
            out.extend(_quant_state_tensors(value))
    return out


# ---------------------------------------------------------------------------------------------- kernels
PROFILES = ("cuda", "cpu")
_active_profile: list[str] = []  # the registration is process-wide: one block at a time
_FLASH_DTYPES = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def device_kernels(profile: str) -> Iterator[None]:
    r"""On meta tensors, run attention (and dropout) with the kernels of a target device, so their memory is
    that device's.

    `F.scaled_dot_product_attention` picks its kernel by device at run time, and on meta it always takes the
    math path, which materialises the (L, S) attention matrix. Inside this block `aten::scaled_dot_product_attention`
    on meta tensors calls an explicit aten kernel instead (diffusers' `AttnProcessor2_0` calls
    `F.scaled_dot_product_attention`):

    - profile "cuda" (what SDPA picks on an H100, honouring `torch.backends.cuda.enable_flash_sdp` /
      `enable_mem_efficient_sdp` and `torch.nn.attention.sdpa_kernel`): flash attention
      (`aten._scaled_dot_product_flash_attention`, saves a logsumexp; head dim padded to a multiple of 8 as
      SDPA pads it) for fp16/bf16 with equal head dims <= 256; else memory-efficient attention
      (`aten._scaled_dot_product_efficient_attention`, saves a logsumexp) when the head dims are aligned
      (multiples of 8 for fp16/bf16, 4 for fp32); else the math path. `F.dropout` in training becomes the
      fused `torch.native_dropout`, as `at::dropout` does on CUDA: its saved mask is bool (1 byte per element)
      where meta and CPU save a float mask. A torch whose cuDNN is newer than 9.15 prefers cuDNN attention on
      sm90 (`check_prefer_cudnn_attention`, aten sdp_utils.cpp); that choice is not modelled.
    - profile "cpu": the kernel the CPU picks for the same call (`torch._fused_sdp_choice` on CPU stand-ins),
      `aten._scaled_dot_product_flash_attention_for_cpu` or the math path, so that a meta run and a real CPU
      run use the same kernel. It is registered for CPU tensors as well, where it reproduces SDPA exactly.

    The kernels are registered for the `AutogradMeta` dispatch key, above autograd, so the backward of the
    chosen kernel is recorded and the recomputation of `torch.utils.checkpoint` takes the same path. The
    registration is process-wide for the duration of the block: one estimate at a time. Attention masks are
    refused: no emuvideo attention passes one, and SDPA's mask preprocessing is not modelled.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if _active_profile:
        raise ValueError(f"device_kernels({_active_profile[0]!r}) is already active; they do not nest")
    lib = torch.library.Library("aten", "IMPL")
    _active_profile.append(profile)
    try:
        if profile == "cuda":
            lib.impl("scaled_dot_product_attention", _sdpa_cuda, "AutogradMeta")
            lib.impl("dropout", _dropout_cuda, "AutogradMeta")
        else:  # on CPU tensors too, where it changes nothing (and a test can compare the numbers)
            lib.impl("scaled_dot_product_attention", _sdpa_cpu, "AutogradMeta")
            lib.impl("scaled_dot_product_attention", _sdpa_cpu, "AutogradCPU")
        yield
    finally:
        lib._destroy()
        _active_profile.pop()


def _check_no_mask(attn_mask) -> None:
    if attn_mask is not None:
        raise ValueError(
            "device_kernels does not model scaled_dot_product_attention with attn_mask (got one of shape "
            f"{tuple(attn_mask.shape)}); call it without a mask"
        )


def _dropout_cuda(input, p, train):  # noqa: A002 - aten's own name
    # at::dropout (aten/src/ATen/native/Dropout.cpp): the fused kernel when training with 0 < p < 1 on CUDA;
    # otherwise _dropout_impl, which returns the input itself or multiplies by zero.
    if not train or p == 0 or input.numel() == 0:
        return input
    if p == 1:
        return input * torch.zeros((), dtype=input.dtype, device=input.device)
    return torch.native_dropout(input, p, True)[0]


def _math(q, k, v, dropout_p, is_causal, scale, gqa):
    return torch.ops.aten._scaled_dot_product_attention_math(
        q, k, v, None, dropout_p, is_causal, scale=scale, enable_gqa=gqa
    )[0]


def _sdpa_cuda(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
    _check_no_mask(attn_mask)
    gqa = enable_gqa
    # The filters of aten/src/ATen/native/transformers/cuda/sdp_utils.cpp that decide on an sm90 device for
    # dense 4-D inputs with the last dim contiguous (what attention layers pass).
    dense = q.dim() == k.dim() == v.dim() == 4 and all(t.stride(-1) == 1 for t in (q, k, v))
    same_dtype = q.dtype == k.dtype == v.dtype
    heads_ok = gqa or (q.shape[:2] == k.shape[:2] == v.shape[:2])
    nonempty = q.shape[-2] > 0 and k.shape[-2] > 0
    causal_ok = not is_causal or q.shape[-2] == k.shape[-2]
    d, dv = q.shape[-1], v.shape[-1]
    flash_on, efficient_on = torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled()
    if flash_on and dense and same_dtype and heads_ok and nonempty and causal_ok and q.dtype in _FLASH_DTYPES:
        if d == k.shape[-1] == dv and d <= 256:
            if scale is None:
                scale = 1.0 / math.sqrt(d)  # of the unpadded head dim, as SDPA computes it
            pad = -d % 8
            if pad:
                q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
            flash = torch.ops.aten._scaled_dot_product_flash_attention
            out = flash(q, k, v, dropout_p, is_causal, False, scale=scale)[0]
            return out[..., :d] if pad else out
    align = 8 if q.dtype in _FLASH_DTYPES else 4
    aligned = d == k.shape[-1] and d % align == 0 and dv % align == 0
    if efficient_on and dense and same_dtype and heads_ok and nonempty and aligned:
        # check_data_ptr_alignment_mem_efficient: storage offsets aligned to `align` elements
        if all(t.storage_offset() % align == 0 for t in (q, k, v)) and not gqa:
            log_sumexp = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
            return torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, v, None, log_sumexp, dropout_p, is_causal, scale=scale
            )[0]
    return _math(q, k, v, dropout_p, is_causal, scale, gqa)


def _cpu_stand_in(t: torch.Tensor) -> torch.Tensor:
    # Same shape, dtype, last-dim layout, requires_grad; one row of memory (the other strides are 0).
    if t.device.type == "cpu":
        return t
    with torch.enable_grad():
        row = torch.empty(t.shape[-1], dtype=t.dtype, requires_grad=t.requires_grad)
        return row.expand(t.shape)


def _sdpa_cpu(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
    _check_no_mask(attn_mask)
    gqa = enable_gqa
    choice = torch._fused_sdp_choice(
        *(_cpu_stand_in(t) for t in (q, k, v)), None, dropout_p, is_causal, scale=scale, enable_gqa=gqa
    )
    if choice == torch.nn.attention.SDPBackend.FLASH_ATTENTION.value:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, scale=scale)[0]
    if choice == torch.nn.attention.SDPBackend.MATH.value:
        return _math(q, k, v, dropout_p, is_causal, scale, gqa)
    raise ValueError(f"the CPU picks SDPA backend {choice} for this call, which device_kernels does not model")


def _arg(args, kwargs, index: int, name: str):
    return kwargs[name] if name in kwargs else (args[index] if len(args) > index else None)


def _round(x: int, m: int) -> int:
    return -(-x // m) * m


def cuda_workspace(func, args, kwargs, out) -> int:
    """Bytes a CUDA kernel allocates and frees inside one op (invisible to any mode), for `LiveMemoryCounter`.

    Modelled, from the sources of the kernels CUDA runs:

    - `aten._scaled_dot_product_flash_attention_backward` (flash-attention 2 `mha_bwd`, pytorch
      flash_api.cpp, non-deterministic mode): `softmax_d` fp32 (B, H, round128(L)), `dq_accum` fp32
      (B, round128(L), H, round(D, 32 if D <= 128 else 64)), plus contiguous copies of `grad_out`/`out` when
      their (B, L, H, D) view is not contiguous, plus expanded dK/dV for grouped-query attention.
    - `aten::mse_loss` / `aten::smooth_l1_loss` with a reduction (aten Loss.cpp): the elementwise loss,
      computed into a temporary before it is reduced into the output.
    - `bitsandbytes::gemm_4bit` (bitsandbytes 0.50 CUDA backend): for more than 4 rows bnb may take its
      "dequantize + F.linear" fallback — always for more than 1536 rows or an in-dim not a multiple of the
      blocksize, and per GPU architecture between — which holds the dequantized weight (N, K) in the input's
      dtype and, with double quantization, two fp32 copies of the absmax. This counts the fallback from 5 rows
      up: exact for training shapes, an upper bound of one weight for small batches.
    """
    name = func.name()
    if name in _REDUCED_LOSSES and func._overloadname == "default" and (args[2] if len(args) > 2 else 1) != 0:
        return allocator_bytes(out.untyped_storage().nbytes())  # the elementwise `loss` beside the output
    if name == "aten::_scaled_dot_product_flash_attention_backward":
        grad_out, q, k, v, o = args[:5]
        b, h, lq, d = q.shape
        hk, lk = k.shape[1], k.shape[2]
        head = _round(d, 8)
        total = allocator_bytes(b * h * _round(lq, 128) * 4)
        total += allocator_bytes(b * _round(lq, 128) * h * _round(head, 32 if head <= 128 else 64) * 4)
        for t in (grad_out, o):
            if not t.transpose(1, 2).is_contiguous():
                total += allocator_bytes(t.numel() * t.element_size())
        if hk != h:
            total += 2 * allocator_bytes(b * lk * h * head * k.element_size())
        return total
    if name == "bitsandbytes::gemm_4bit":
        a, shape_b = args[0], _arg(args, kwargs, 2, "shapeB")
        rows = a.numel() // a.shape[-1]
        if rows <= 4:  # bnb's _GEMM_4BIT_CUSTOM_FLOOR_M: the fused kernel, no temporaries
            return 0
        total = allocator_bytes(shape_b[0] * shape_b[1] * a.element_size())
        absmax_8bit = _arg(args, kwargs, 7, "absmax_8bit")
        if absmax_8bit is not None:
            total += 2 * allocator_bytes(absmax_8bit.numel() * 4)
        return total
    return 0


# ---------------------------------------------------------------------------------------------- bitsandbytes
def _seed_bnb_code_cache() -> None:
    # bitsandbytes.functional.quantize_blockwise caches its "dynamic" code on the device of the first call;
    # a first call on meta caches a meta code and breaks every later CPU quantization ("Cannot copy out of
    # meta tensor"). Seed the cache with the CPU code such a call would have stored.
    import bitsandbytes.functional as bnbF

    if "dynamic" not in bnbF.name2qmap:
        bnbF.name2qmap["dynamic"] = bnbF.create_dynamic_map()


def params4bit_on_meta(
    weight: torch.Tensor,
    *,
    quant_type: str = "nf4",
    compress_statistics: bool = True,
    blocksize: int = 64,
    quant_storage: torch.dtype = torch.uint8,
    module: nn.Module | None = None,
):
    """A quantized bitsandbytes `Params4bit` on meta, with the shapes a CUDA or CPU quantization gives.

    `Params4bit.to("meta")` skips quantization (it quantizes on the first move to a real device), so a meta
    `Linear4bit` would hold an fp32 weight and no `QuantState`. This runs `bitsandbytes.functional.quantize_4bit`
    on the meta weight instead (bnb registers fake kernels for its quantize ops): packed uint8 data
    ((N*K + 1) // 2, 1), and with `compress_statistics` the nested state (uint8 absmax per block of
    `blocksize`, fp32 offset, and a `state2` of fp32 absmax per 256 blocks and a 256-entry code).

    `emuvideo.training.quantize.quantize_linear_layers(model, "meta")` quantizes with it.

    Args:
        weight: `(out_features, in_features)` meta tensor.
        module: the `Linear4bit` that will hold it (its `quant_state` is set too).
    """
    import bitsandbytes as bnb

    if weight.device.type != "meta":
        raise ValueError(f"params4bit_on_meta quantizes a meta weight, got one on {weight.device}")
    _seed_bnb_code_cache()
    data, state = bnb.functional.quantize_4bit(
        weight.detach(),
        blocksize=blocksize,
        compress_statistics=compress_statistics,
        quant_type=quant_type,
        quant_storage=quant_storage,
    )
    param = bnb.nn.Params4bit(
        data,
        requires_grad=False,
        quant_state=state,
        blocksize=blocksize,
        compress_statistics=compress_statistics,
        quant_type=quant_type,
        quant_storage=quant_storage,
        module=module,
        bnb_quantized=True,
    )
    if module is not None:
        module.quant_state = state
    return param


PAGED_MIN_NUMEL = 1e5  # bitsandbytes/optim/optimizer.py Optimizer8bit.get_state_buffer: `p.numel() < 1e5`


def page_optimizer_state(optimizer, counter: LiveMemoryCounter) -> None:
    """Make a bitsandbytes paged optimizer (`PagedAdamW8bit`, ...) on meta allocate state as it does on CUDA.

    On CUDA, `Optimizer8bit.get_state_buffer` allocates a state buffer with at least 1e5 elements with
    cudaMallocManaged (paged, unified memory, not counted by `torch.cuda.max_memory_allocated`) and smaller ones
    through the caching allocator; on meta it would call cudaMallocManaged and fail. Here buffers of meta
    parameters are meta tensors, the paged ones labelled `PAGED` from birth, so `counter` reports them beside
    the peak. The per-block absmax tensors stay ordinary allocations, as in bnb.
    """
    if not getattr(optimizer, "is_paged", False):
        raise ValueError(f"{type(optimizer).__name__} is not a paged bitsandbytes optimizer")
    original = optimizer.get_state_buffer

    def get_state_buffer(p, dtype=torch.float32):
        if p.device.type != "meta":
            return original(p, dtype=dtype)
        if p.numel() < PAGED_MIN_NUMEL:
            return torch.zeros_like(p, dtype=dtype)
        with counter.labelled(PAGED):
            return torch.zeros_like(p, dtype=dtype)

    optimizer.get_state_buffer = get_state_buffer
