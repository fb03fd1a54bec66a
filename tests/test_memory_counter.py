"""The measuring core of `emuvideo estimate-memory`: a storage counter that gives the same bytes on meta as on
real CPU tensors, and the pieces that make meta behave like CUDA (attention/dropout kernels, kernel
workspaces, bitsandbytes on meta)."""

import functools
import inspect

import bitsandbytes as bnb
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from emuvideo.models.presets import build_video_unet
from emuvideo.training.config import LoraConfig
from emuvideo.training.lora import add_lora
from emuvideo.training.quantize import quantize_linear_layers
from emuvideo.utils.memory import (
    ACTIVATIONS,
    GRADIENTS,
    HOST,
    OPTIMIZER,
    PAGED,
    TRAINABLE,
    UNTRACKED,
    WEIGHTS,
    WORKSPACE,
    LiveMemoryCounter,
    allocator_bytes,
    cuda_workspace,
    device_kernels,
    page_optimizer_state,
    params4bit_on_meta,
)

DEVICES = ["meta", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models are latency-bound


class OpRecorder(TorchDispatchMode):
    """Names of the aten ops that ran (below autograd: forward and backward)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.name())
        return func(*args, **(kwargs or {}))


def floats(n: int, device: str, **kwargs) -> torch.Tensor:
    return torch.empty(n, device=device, **kwargs)


# ---------------------------------------------------------------------------------------------- the counter
def test_allocator_bytes_rounds_up_to_cuda_blocks_and_keeps_empty_at_zero():
    assert [allocator_bytes(n) for n in (0, 1, 511, 512, 513, 4096, 4097)] == [0, 512, 512, 512, 1024, 4096, 4608]
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        allocator_bytes(-1)


@pytest.mark.parametrize("device", DEVICES)
def test_known_allocations_views_and_in_place_ops_count_once(device):
    with LiveMemoryCounter(device) as counter:
        a = floats(1000, device)  # 4000 bytes -> 4096
        assert counter.current == 4096
        b = torch.zeros(129, device=device)  # 516 -> 1024 (factories count)
        assert counter.current == 4096 + 1024
        views = [a.view(10, 100), a[::2], a.view(10, 100).t(), a.detach(), a.unsqueeze(0)]
        a.add_(1).mul_(2)  # in place
        torch.add(a, 1, out=a)
        assert counter.current == 4096 + 1024  # views and in-place ops share a's storage
        c = a + 1  # a new storage
        assert counter.current == 4096 + 1024 + 4096
        del c
        assert counter.current == 4096 + 1024
        del a
        assert counter.current == 4096 + 1024  # the views keep a's storage alive
        del views
        assert counter.current == 1024
        out = torch.empty(0, device=device)
        assert counter.current == 1024  # an empty storage takes no block
        torch.add(b, b, out=out)  # out= resizes the storage in place
        assert counter.current == 2048
        assert counter.peak == 4096 + 1024 + 4096
        assert counter.breakdown() == {ACTIVATIONS: 2048}
        counter.reset_peak()
        assert counter.peak == counter.current == 2048
        del b, out
    assert counter.current == 0 and counter.peak == 2048


@pytest.mark.parametrize("device", DEVICES)
def test_backward_ops_reach_the_counter_and_gradients_are_labelled_as_they_land(device):
    x = torch.zeros(1024, device=device, requires_grad=True)  # 4096 bytes, made before the counter
    with LiveMemoryCounter(device) as counter:
        counter.track(x, TRAINABLE)
        counter.track_gradients([x])
        s = x.exp().sum()  # exp's output (4096) is saved for backward; the sum takes a block (512)
        assert counter.current == 4096 + 4096 + 512
        s.backward()  # ones_like(s) (512), then exp's backward grad * result (4096) -> x.grad
        assert counter.peak == 4096 + 4096 + 512 + 512 + 4096
        # The graph is gone (exp's output freed); x.grad stays, labelled when autograd accumulated it — also
        # in the breakdown at the peak, where it was alive.
        assert counter.breakdown() == {TRAINABLE: 4096, ACTIVATIONS: 512, GRADIENTS: 4096}
        assert counter.peak_breakdown == {TRAINABLE: 4096, ACTIVATIONS: 4096 + 512 + 512, GRADIENTS: 4096}


@functools.cache
def checkpointed_exp_peak(device: str, checkpoint: bool) -> tuple[int, int]:
    x = torch.zeros(1024, device=device, requires_grad=True)

    def f(t):
        return t.exp().exp()

    with LiveMemoryCounter(device) as counter:
        counter.track(x, TRAINABLE)
        y = torch.utils.checkpoint.checkpoint(f, x, use_reentrant=False) if checkpoint else f(x)
        after_forward = counter.current
        y.sum().backward()
    return after_forward, counter.peak


@pytest.mark.parametrize("device", DEVICES)
def test_checkpoint_recomputation_in_backward_is_counted(device):
    forward, peak = checkpointed_exp_peak(device, checkpoint=True)
    assert forward == 2 * 4096  # x and the output; the inner exp is not kept
    # Backward recomputes both exps (2 x 4096) before the first gradient (4096) exists: a counter that
    # missed the recomputation would stay below this.
    assert peak >= forward + 512 + 2 * 4096 + 4096
    assert (forward, peak) == checkpointed_exp_peak("cpu" if device == "meta" else "meta", checkpoint=True)
    assert checkpointed_exp_peak(device, checkpoint=False)[0] == 3 * 4096  # both exps kept without it


@pytest.mark.parametrize("device", DEVICES)
def test_untracked_inputs_are_counted_and_labels_reach_the_peak_breakdown(device):
    weight = torch.zeros(256, device=device)  # made before the counter, never tracked
    with LiveMemoryCounter(device) as counter:
        y = weight * 2
        assert counter.breakdown() == {UNTRACKED: 1024, ACTIVATIONS: 1024}
        counter.track(weight, WEIGHTS)
        assert counter.peak_breakdown == {WEIGHTS: 1024, ACTIVATIONS: 1024}
        del y


@pytest.mark.parametrize("loss", [F.mse_loss, F.smooth_l1_loss, F.l1_loss])
def test_a_reduced_loss_holds_the_storage_its_real_kernel_allocates(loss):
    counted = {}
    for device in DEVICES:
        pred, target = torch.zeros(4, 100, device=device), torch.zeros(4, 100, device=device)
        with LiveMemoryCounter(device) as counter:
            value = loss(pred, target)
            counted[device] = counter.breakdown()[ACTIVATIONS]
        assert value.shape == ()
    assert counted["meta"] == counted["cpu"] == (2048 if loss is not F.l1_loss else 512)  # 400 floats, or one


def test_storages_outside_the_allocator_are_reported_beside_the_peak():
    with LiveMemoryCounter("meta") as counter:
        with counter.labelled(PAGED):
            paged = torch.zeros(1000, device="meta")
        plain = torch.zeros(1000, device="meta")
        assert counter.current == counter.peak == 4096
        assert counter.peak_breakdown == {PAGED: 4096, ACTIVATIONS: 4096}
        temporary = plain + 1
        del temporary
        assert (counter.current, counter.peak) == (4096, 8192)
        with pytest.raises(ValueError, match="alive at the peak and cannot move"):
            counter.track(plain, HOST)  # the peak would be wrong: it held `plain`
        counter.reset_peak()
        counter.track(plain, HOST)  # right after a reset nothing else happened: the peak follows
        assert counter.current == counter.peak == 0
        assert counter.breakdown() == {PAGED: 4096, HOST: 4096}
        del paged, plain


def test_a_workspace_counts_towards_the_peak_at_its_op_only():
    def one_mib_in_mm(func, args, kwargs, out):
        return 2**20 if func.name() == "aten::mm" else 0

    a = torch.empty(16, 16, device="meta")
    with LiveMemoryCounter("meta", workspace=one_mib_in_mm) as counter:
        counter.track(a, WEIGHTS)
        b = a @ a
        assert counter.current == 2 * 1024
        assert counter.peak == 2 * 1024 + 2**20
        assert counter.peak_breakdown == {WEIGHTS: 1024, ACTIVATIONS: 1024, WORKSPACE: 2**20}
        del b


# ---------------------------------------------------------------------------------------------- a training step
def tiny_step_peaks(device: str, *, checkpointing: bool = False, qlora: bool = False, steps: int = 2):
    """Peaks of `steps` training steps of the tiny video U-Net on `device`; the counter's view of each step."""
    torch.manual_seed(0)
    with torch.device(device):
        unet = build_video_unet("tiny")
    if qlora:  # frozen NF4 base + LoRA (as lora.quantize_base), 8-bit AdamW
        unet.requires_grad_(False)
        count = quantize_linear_layers(unet, device, compute_dtype=torch.float32)  # on meta: params4bit_on_meta
        nf4 = [m for m in unet.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert len(nf4) == count and all(m.weight.bnb_quantized and m.weight.device.type == device for m in nf4)
        add_lora(unet, LoraConfig(rank=4, alpha=4, layers="all"))
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = bnb.optim.AdamW8bit(params, lr=1e-4) if qlora else torch.optim.AdamW(params, lr=1e-4, foreach=True)
    peaks = []
    with device_kernels("cpu"), LiveMemoryCounter(device) as counter:
        counter.track_module(unet)
        counter.track_gradients(params)
        for _ in range(steps):
            counter.reset_peak()
            sample = torch.randn(2, 4, 3, 8, 8, device=device)
            text = torch.randn(2, 5, 32, device=device)
            pred = unet(sample, torch.full((2,), 10, device=device), text).sample
            F.mse_loss(pred, sample).backward()
            with counter.untracked_as(HOST):  # AdamW's step counters: on the host in a CUDA run
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            counter.track_optimizer(optimizer)
            del sample, text, pred
            peaks.append((counter.peak, counter.peak_breakdown))
    return peaks


@functools.cache
def _tiny_peaks(device, checkpointing, qlora):
    return tiny_step_peaks(device, checkpointing=checkpointing, qlora=qlora)


def tiny_peaks(device, checkpointing=False, qlora=False):  # one cache entry per configuration
    return _tiny_peaks(device, checkpointing, qlora)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_tiny_unet_training_step_counts_the_same_on_meta_as_on_cpu(checkpointing):
    meta, cpu = tiny_peaks("meta", checkpointing), tiny_peaks("cpu", checkpointing)
    for (meta_peak, meta_parts), (cpu_peak, cpu_parts) in zip(meta, cpu):
        assert meta_peak == cpu_peak  # exact; the method's bar is 2%
        assert meta_parts == {k: v for k, v in cpu_parts.items() if k != HOST}
    steady = meta[1][1]  # the second step holds the optimizer state from the start
    assert steady[OPTIMIZER] == 2 * steady[TRAINABLE] and steady[GRADIENTS] > 0 and steady[ACTIVATIONS] > 0


def test_gradient_checkpointing_lowers_the_counted_peak():
    plain, checkpointed = tiny_peaks("meta"), tiny_peaks("meta", checkpointing=True)
    for (plain_peak, plain_parts), (ckpt_peak, ckpt_parts) in zip(plain, checkpointed):
        assert ckpt_peak < 0.6 * plain_peak
        assert ckpt_parts[ACTIVATIONS] < 0.5 * plain_parts[ACTIVATIONS]


def test_qlora_training_step_counts_the_same_on_meta_as_on_cpu():
    meta, cpu = tiny_peaks("meta", qlora=True), tiny_peaks("cpu", qlora=True)
    assert [peak for peak, _ in meta] == [peak for peak, _ in cpu]
    parts = meta[1][1]
    assert parts[WEIGHTS] > parts[TRAINABLE] > 0  # the NF4 base (data and quantization state) and LoRA


# ---------------------------------------------------------------------------------------------- bitsandbytes
def quant_state_layout(state) -> dict:
    layout = {"shape": state.shape, "blocksize": state.blocksize, "dtype": state.dtype}
    for name, value in vars(state).items():
        if isinstance(value, torch.Tensor):
            layout[name] = (tuple(value.shape), value.dtype)
        elif type(value) is type(state):
            layout[name] = quant_state_layout(value)
    return layout


def test_nf4_quantization_on_meta_gives_the_cpu_layout(monkeypatch):
    monkeypatch.setattr(bnb.functional, "name2qmap", {})  # as in a fresh process: bnb's code cache is empty
    weight = torch.randn(96, 160)
    meta = params4bit_on_meta(weight.to("meta"), quant_type="nf4", compress_statistics=True)
    # Quantizing on meta first does not leave bnb's code cache on meta (which breaks CPU quantization).
    cpu = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4").to("cpu")
    assert meta.device.type == "meta" and meta.bnb_quantized
    assert (meta.shape, meta.dtype) == (cpu.shape, cpu.dtype) == ((96 * 160 // 2, 1), torch.uint8)
    assert quant_state_layout(meta.quant_state) == quant_state_layout(cpu.quant_state)
    assert quant_state_layout(meta.quant_state)["absmax"] == ((240,), torch.uint8)  # one per 64 weights
    assert quant_state_layout(meta.quant_state)["state2"]["absmax"] == ((1,), torch.float32)  # per 256 blocks


def linear4bit(device: str, compute_dtype: torch.dtype) -> bnb.nn.Linear4bit:
    torch.manual_seed(0)
    weight = torch.randn(96, 160)
    layer = bnb.nn.Linear4bit(160, 96, bias=True, compute_dtype=compute_dtype, quant_type="nf4", device="meta")
    if device == "meta":
        layer.weight = params4bit_on_meta(weight.to("meta"), module=layer)
    else:
        layer.weight = bnb.nn.Params4bit(weight, quant_type="nf4", compress_statistics=True, module=layer).to(device)
    layer.bias = nn.Parameter(torch.zeros(96, device=device), requires_grad=False)
    layer.support_avx512bf16_for_cpu = False
    return layer


def linear4bit_peak(device, compute_dtype, workspace=None):
    layer = linear4bit(device, compute_dtype)
    x = torch.ones(4, 50, 160, device=device, requires_grad=True)
    with LiveMemoryCounter(device, workspace=workspace) as counter:
        counter.track_module(layer)
        counter.track(x, TRAINABLE)
        layer(x).float().square().sum().backward()  # the weight is dequantized again in backward
    assert x.grad.shape == x.shape
    return counter.peak


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_linear4bit_forward_backward_counts_the_same_on_meta_as_on_cpu(compute_dtype):
    assert linear4bit_peak("meta", compute_dtype) == linear4bit_peak("cpu", compute_dtype)


def test_cuda_workspace_of_a_4bit_matmul_is_what_bitsandbytes_cuda_fallback_allocates():
    # bitsandbytes' CUDA gemm_4bit for many rows dequantizes inside the op (invisible to a mode); run the same
    # steps as visible ops on CPU (backends/cuda/ops.py `_dequant_linear_fallback`) and compare the peaks.
    layer = linear4bit("cpu", torch.bfloat16)
    state = layer.weight.quant_state
    x = torch.ones(4, 50, 160, dtype=torch.bfloat16)
    with LiveMemoryCounter("cpu") as counter:
        counter.track_module(layer)
        counter.track(x, TRAINABLE)
        bias = layer.bias.to(x.dtype)  # as Linear4bit.forward casts it
        # (the .out variants bnb's CUDA backend writes into have no CPU kernel; these allocate the same)
        absmax_dq = torch.ops.bitsandbytes.dequantize_blockwise(
            state.absmax, state.state2.absmax, state.state2.code, 256, torch.float32
        )
        absmax = absmax_dq + state.offset
        b_dq = torch.ops.bitsandbytes.dequantize_4bit(layer.weight, absmax, 64, "nf4", state.shape, x.dtype)
        out = F.linear(x, b_dq, bias)
        del absmax_dq, absmax, b_dq
        fallback_peak = counter.peak

    layer = linear4bit("meta", torch.bfloat16)
    x = torch.ones(4, 50, 160, dtype=torch.bfloat16, device="meta")
    with LiveMemoryCounter("meta", workspace=cuda_workspace) as counter:
        counter.track_module(layer)
        counter.track(x, TRAINABLE)
        bias = layer.bias.to(x.dtype)
        out = bnb.matmul_4bit(x, layer.weight, bias=bias, quant_state=layer.weight.quant_state)
    assert out.shape == (4, 50, 96)
    assert counter.peak == fallback_peak
    assert counter.peak_breakdown[WORKSPACE] == allocator_bytes(96 * 160 * 2) + 2 * allocator_bytes(240 * 4)


def optimizer_run(device: str, optimizer_cls, numels=(100, 5000, 100_000)):
    params = [nn.Parameter(torch.zeros(n, device=device)) for n in numels]
    optimizer = optimizer_cls(params, lr=1e-3)
    with LiveMemoryCounter(device) as counter:
        if getattr(optimizer, "is_paged", False) and device == "meta":
            page_optimizer_state(optimizer, counter)
        counter.track(params, TRAINABLE)
        for _ in range(2):
            for p in params:
                p.grad = torch.ones_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        counter.track_optimizer(optimizer)
    return optimizer, counter


@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")
@pytest.mark.parametrize("optimizer_cls", [bnb.optim.AdamW8bit, bnb.optim.PagedAdamW8bit])
def test_bnb_8bit_optimizer_state_on_meta_matches_cpu(optimizer_cls):
    (meta_opt, meta), (cpu_opt, cpu) = optimizer_run("meta", optimizer_cls), optimizer_run("cpu", optimizer_cls)
    for p_meta, p_cpu in zip(meta_opt.param_groups[0]["params"], cpu_opt.param_groups[0]["params"]):
        layout = {k: (v.shape, v.dtype) for k, v in meta_opt.state[p_meta].items() if isinstance(v, torch.Tensor)}
        assert layout == {k: (v.shape, v.dtype) for k, v in cpu_opt.state[p_cpu].items() if isinstance(v, torch.Tensor)}
    assert meta_opt.state[p_meta]["state1"].dtype == torch.uint8  # >= 4096 elements: 8-bit state
    if optimizer_cls is bnb.optim.AdamW8bit:
        assert (meta.peak, meta.breakdown()) == (cpu.peak, cpu.breakdown())
    else:
        # On CUDA the two state buffers of the 100k-element parameter are paged (cudaMallocManaged): not in
        # max_memory_allocated. A CPU run has no paging, so it holds exactly them more.
        paged = 2 * allocator_bytes(100_000)
        assert meta.breakdown()[PAGED] == paged
        assert meta.current + paged == cpu.current
        assert meta.peak + paged == cpu.peak


def test_paged_threshold_mirrors_bitsandbytes():
    source = inspect.getsource(bnb.optim.optimizer.Optimizer8bit.get_state_buffer)
    assert "p.numel() < 1e5" in source  # the rule `page_optimizer_state` mirrors; update both if it changes
    with LiveMemoryCounter("meta") as counter, pytest.raises(ValueError, match="not a paged"):
        page_optimizer_state(bnb.optim.AdamW8bit([nn.Parameter(torch.zeros(4, device="meta"))]), counter)


# ---------------------------------------------------------------------------------------------- attention kernels
def qkv(device, dtype=torch.float32, head_dims=(8, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, 16, d, generator=g, dtype=dtype).to(device).requires_grad_() for d in head_dims]


@pytest.mark.parametrize("head_dims", [(8, 8, 8), (8, 8, 16)], ids=["flash", "math"])
def test_cpu_profile_reproduces_sdpa_on_cpu(head_dims, monkeypatch):
    import emuvideo.utils.memory as memory

    calls = []
    routed = memory._sdpa_cpu
    monkeypatch.setattr(memory, "_sdpa_cpu", lambda *a, **kw: calls.append(1) or routed(*a, **kw))
    ref = qkv("cpu", head_dims=head_dims)
    out_ref = F.scaled_dot_product_attention(*ref)
    out_ref.square().sum().backward()
    mine = qkv("cpu", head_dims=head_dims)
    with device_kernels("cpu"), OpRecorder() as rec:
        out = F.scaled_dot_product_attention(*mine)
        out.square().sum().backward()
    assert calls == [1]  # the explicit kernel choice ran
    assert torch.equal(out, out_ref)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(mine, ref))
    flash = "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert (flash in rec.ops) == (head_dims[0] == head_dims[2])  # different value head dim: the math path


@pytest.mark.parametrize(
    "profile,dtype,head_dims,kernel",
    [
        ("cpu", torch.float32, (8, 8, 8), "aten::_scaled_dot_product_flash_attention_for_cpu"),
        ("cuda", torch.bfloat16, (64, 64, 64), "aten::_scaled_dot_product_flash_attention"),
        ("cuda", torch.float16, (12, 12, 12), "aten::_scaled_dot_product_flash_attention"),  # padded to 16
        ("cuda", torch.float32, (64, 64, 64), "aten::_scaled_dot_product_efficient_attention"),
        ("cuda", torch.bfloat16, (64, 64, 32), "aten::_scaled_dot_product_efficient_attention"),
        ("cuda", torch.float32, (6, 6, 6), "aten::_safe_softmax"),  # unaligned: the math path
    ],
)
def test_meta_attention_runs_the_profile_kernel_forward_and_backward(profile, dtype, head_dims, kernel):
    q, k, v = qkv("meta", dtype, head_dims)
    with device_kernels(profile), OpRecorder() as rec:
        out = F.scaled_dot_product_attention(q, k, v)
        out.float().sum().backward()
    assert out.shape == (2, 4, 16, head_dims[2]) and q.grad.shape == q.shape and v.grad.shape == v.shape
    assert kernel in rec.ops
    if kernel != "aten::_safe_softmax":
        assert kernel + "_backward" in rec.ops and "aten::_safe_softmax" not in rec.ops  # no (L, S) matrix
        with OpRecorder() as rec:
            F.scaled_dot_product_attention(q, k, v)
        assert kernel not in rec.ops and "aten::_safe_softmax" in rec.ops  # outside the block: meta's math


def test_checkpoint_recomputes_attention_with_the_profile_kernel_and_profiles_do_not_nest():
    q, k, v = qkv("meta", torch.bfloat16, (64, 64, 64))
    with device_kernels("cuda"), OpRecorder() as rec:
        out = torch.utils.checkpoint.checkpoint(F.scaled_dot_product_attention, q, k, v, use_reentrant=False)
        out.float().sum().backward()
        with pytest.raises(ValueError, match="already active"):
            with device_kernels("cpu"):
                pass
    assert rec.ops.count("aten::_scaled_dot_product_flash_attention") == 2  # forward, and again in backward


def test_flash_attention_backward_workspace_on_cuda():
    q, k, v = qkv("meta", torch.bfloat16, (64, 64, 64))  # (B, H, L, D) = (2, 4, 16, 64), contiguous
    with device_kernels("cuda"), LiveMemoryCounter("meta", workspace=cuda_workspace) as counter:
        F.scaled_dot_product_attention(q, k, v).float().sum().backward()
    # mha_bwd: softmax_d fp32 (B, H, round128(L)) and dq_accum fp32 (B, round128(L), H, D); and, as these
    # (B, H, L, D) tensors are not contiguous in the kernel's (B, L, H, D) layout, copies of out and grad_out.
    assert counter.peak_breakdown[WORKSPACE] == 2 * 4 * 128 * 4 + 2 * 128 * 4 * 64 * 4 + 2 * (2 * 4 * 16 * 64 * 2)


def test_cuda_profile_dropout_saves_a_bool_mask_and_masks_are_refused():
    x = torch.empty(1000, device="meta", requires_grad=True)
    with device_kernels("cuda"), LiveMemoryCounter("meta") as counter:
        y = F.dropout(x, 0.1, training=True)
        assert counter.breakdown()[ACTIVATIONS] == allocator_bytes(4000) + allocator_bytes(1000)  # fp32, bool
        assert F.dropout(x, 0.1, training=False) is x
        with pytest.raises(ValueError, match="attn_mask"):
            q = torch.empty(1, 1, 4, 8, device="meta")
            F.scaled_dot_product_attention(q, q, q, attn_mask=torch.zeros(4, 4, device="meta"))
        del y
    with LiveMemoryCounter("meta") as counter:  # meta's own dropout keeps a float mask
        y = F.dropout(x, 0.1, training=True)
        assert counter.breakdown()[ACTIVATIONS] == 2 * allocator_bytes(4000)
        del y
    with pytest.raises(ValueError, match="profile must be one of"):
        with device_kernels("tpu"):
            pass
