"""The training loop every stage and fine-tune shares, on accelerate.

What it guarantees:
- mixed precision, gradient accumulation and multi-process come from `accelerate`: DDP, or FSDP2 (parameters,
  gradients and optimizer state sharded) with `accelerate launch --config_file configs/accelerate/fsdp.yaml`
  (docs/scaling.md); under FSDP checkpoints are sharded (one file per process), samples are drawn by every
  process (each forward gathers the shards) and the final weights are gathered into one model for `save_fn`;
- checkpoints every N steps hold model, optimizer, LR schedule, RNG states and the data position; they
  are written into `checkpoints/.tmp-checkpoint-N/` and renamed, so a kill while saving never leaves a broken
  one (leftovers are removed at the next start), and list their files with sizes, so a checkpoint damaged
  afterwards is recognised; the last K are kept; `resume="latest"` continues exactly where the run stopped,
  from the newest checkpoint that can be read (a damaged one is skipped with a warning naming it);
- one run at a time per output folder: a second one is refused (`.lock`, released by the OS when the holder
  ends, however it ends);
- Ctrl+C stops after the current step with a checkpoint (a second Ctrl+C stops at once) and raises
  `TrainingInterrupted` naming the checkpoint to resume from;
- a NaN/inf loss stops the run with a message and keeps the last good checkpoint;
- progress: tqdm (loss, it/s, ETA), TensorBoard scalars and the resolved config as hparams, `losses.csv` and
  a loss-curve PNG.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import math
import os
import pickle
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import RNG_STATE_NAME, DataLoaderConfiguration, DistributedType, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import save_config, to_dict
from ..data.sources import process_state
from ..utils.files import atomic_path
from .checkpoints import checkpoint_problem, checkpoints, remove_leftovers, resolve_resume, swap_in  # noqa: F401
from .checkpoints import rng_state_problem
from .config import TrainConfig

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl+C stopped the run; the message names the checkpoint to resume from."""


@dataclass
class TrainResult:
    step: int
    last_loss: float
    output_dir: Path


def make_optimizer(params, optim, foreach: bool | None = None) -> torch.optim.Optimizer:
    """The optimizer `optim.optimizer` names. `foreach` (AdamW): None lets torch choose (True on CUDA);
    `emuvideo estimate-memory` sets True, so a meta step allocates the temporaries a CUDA step does."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    kwargs = dict(lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    if optim.optimizer == "adamw":
        if optim.fused and any(p.is_meta for p in params):
            # `estimate-memory`'s meta step: the fused kernel does not run on meta. It updates in place, with none
            # of foreach's per-step temporaries, so the single-tensor path (one parameter's temporaries at a time,
            # the same optimizer state) stands in for it.
            return torch.optim.AdamW(params, **kwargs, foreach=False)
        if optim.fused:  # one kernel for all parameters; torch refuses foreach beside it
            return torch.optim.AdamW(params, **kwargs, fused=True)
        return torch.optim.AdamW(params, **kwargs, foreach=foreach)
    import bitsandbytes as bnb

    if optim.optimizer == "adamw8bit":
        return bnb.optim.AdamW8bit(params, **kwargs)
    if optim.optimizer == "paged_adamw8bit":
        # Paged optimizer state lives in unified memory and pages to CPU under GPU memory pressure; on a
        # CPU-only machine bitsandbytes falls back to ordinary (non-paged) buffers.
        return bnb.optim.PagedAdamW8bit(params, **kwargs)
    raise ValueError(f"unknown optimizer {optim.optimizer!r}")


def _warmup(warmup_steps: int):
    return lambda step: min(1.0, (step + 1) / max(1, warmup_steps))


def check_fsdp(plugin) -> None:
    """FSDP settings the Trainer cannot run, refused with the setting to change."""
    if plugin.fsdp_version == 1 and not plugin.use_orig_params:
        # FSDP1 flattens each wrapped block into one parameter, which must then be all frozen or all trained.
        raise ValueError("FSDP1 (fsdp_version: 1) needs fsdp_use_orig_params: true: frozen and trained "
                         "parameters share the wrapped blocks; or use fsdp_version: 2 (configs/accelerate/fsdp.yaml, "
                         "torch >= 2.6)")
    if plugin.activation_checkpointing:
        raise ValueError("fsdp_activation_checkpointing: true: recomputation is the emuvideo config's "
                         "gradient_checkpointing (diffusers' own); set fsdp_activation_checkpointing: false")


def storage_free_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose parameters and persistent buffers are meta tensors: its structure, no storage.

    FSDP replaces the parameters of the module it shards; this copy, made before, keeps the structure the
    gathered weights are loaded into (`fill_storage_free_copy`). Non-persistent buffers are shared with
    `model`. Parameters of other classes than `nn.Parameter` (bitsandbytes' frozen 4-bit `Params4bit`, whose
    quantization state a meta tensor would lose) are copied to the CPU, so the device keeps only its shard.
    """
    kept = {id(t) for t in model.state_dict(keep_vars=True).values()}
    memo = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) not in kept:
            memo[id(t)] = t
        elif isinstance(t, torch.nn.Parameter) and type(t) is not torch.nn.Parameter:
            memo[id(t)] = copy.deepcopy(t).cpu()  # a copy first: Params4bit.to moves its quant_state in place
        elif type(t) is torch.nn.Parameter:
            memo[id(t)] = torch.nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=t.requires_grad)
        else:
            memo[id(t)] = torch.empty_like(t, device="meta")
    return copy.deepcopy(model, memo)


def fill_storage_free_copy(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Load `state` into the meta tensors of a `storage_free_copy`, in place; every one must be in `state`."""
    empty = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    missing = [n for n in empty if n not in state]
    if missing:
        raise RuntimeError(f"the gathered state dict lacks {missing[0]!r} (and {len(missing) - 1} more)")
    model.load_state_dict({n: state[n] for n in empty}, strict=False, assign=True)
    return model


# One lock per output folder and process; re-entrant, so `run_stage` can take it before the models load and
# the Trainer again around the loop.
_LOCKS: dict[Path, list] = {}


@contextlib.contextmanager
def run_lock(output_dir: str | Path):
    """Hold `output_dir/.lock` while a run writes there: a second run into the folder is refused.

    An `fcntl.flock` lock, which the OS releases when its holder exits, however it exits (a run killed with
    SIGKILL leaves the file, not the lock: a resume goes ahead). A run that ends, or is refused, removes the file,
    and the folder when it made it and left it empty. Only the main process locks; no-op where `fcntl` does not
    exist (Windows).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    folder = Path(output_dir).absolute()
    if folder in _LOCKS or not process_state().is_main_process:
        if folder in _LOCKS:
            _LOCKS[folder][1] += 1
        try:
            yield
        finally:
            if folder in _LOCKS:
                _LOCKS[folder][1] -= 1
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".lock"
    while True:
        handle = open(lock, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ValueError(f"output folder {str(output_dir)!r} is in use by another run (pid {holder}); wait for "
                             "it to end, or choose another output_dir") from None
        if _is_open_file(handle, lock):
            break
        handle.close()  # the run before removed this file as it ended, after we opened it: lock the new one
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _LOCKS[folder] = [handle, 1]
    try:
        yield
    finally:
        _LOCKS[folder][1] -= 1
        if _LOCKS[folder][1] == 0:
            del _LOCKS[folder]
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # while still holding it: another run that opened it re-opens (`_is_open_file`)
            handle.close()  # releases the lock
            if created:
                with contextlib.suppress(OSError):  # only if empty: a run refused before it wrote anything
                    folder.rmdir()


def _is_open_file(handle, path: Path) -> bool:
    """Whether `path` still names the file `handle` has open."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(handle.fileno()))
    except FileNotFoundError:
        return False


class _StopOnCtrlC:
    """While active (main thread only): the first Ctrl+C asks the loop to stop after the current step, a second
    one raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested, self._previous = False, None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("Ctrl+C: stopping after this step with a checkpoint (Ctrl+C again to stop at once)")

    def __enter__(self):
        # Only in place of Python's own handler: a process that ignores SIGINT (nohup) or handles it keeps doing so.
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def hparams(config) -> dict:
    """The config as flat TensorBoard hparams: `{"optim.lr": 1e-4, ...}`, lists as text, None left out."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif value is not None:
                flat[prefix + key] = value if isinstance(value, (bool, int, float, str)) else str(list(value))

    walk(to_dict(config), "")
    return flat


class Trainer:
    """Runs `loss_fn(model, batch) -> loss` over `dataset` for `config.max_steps` optimizer steps.

    Args:
        config: the resolved `TrainConfig` (saved beside every checkpoint).
        model: the module whose trainable parameters are optimised (and checkpointed).
        loss_fn: `(model, batch) -> scalar loss`; it draws its noise from torch's global RNG, which the
            checkpoints restore.
        dataset: a map-style dataset; batches are collated by `collate_fn`.
        sample_fn: `(model, step, writer_dir) -> dict[str, np.ndarray video]` called every `sample_every`
            steps on the main process (under FSDP on every process, as its forward is collective; the main
            one's videos are written); videos are saved as GIFs and to TensorBoard.
        save_fn: `(model, folder)` writes the final weights in their published format, on the main process
            (under FSDP `model` is a CPU copy holding the gathered weights).
    """

    def __init__(
        self,
        config: TrainConfig,
        model: torch.nn.Module,
        loss_fn: Callable,
        dataset,
        collate_fn: Callable | None = None,
        sample_fn: Callable | None = None,
        save_fn: Callable | None = None,
    ) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
        set_seed(config.seed)
        acc = self.accelerator
        self.fsdp = acc.distributed_type == DistributedType.FSDP
        if self.fsdp:
            check_fsdp(acc.state.fsdp_plugin)
        # After FSDP's prepare no process holds the whole model: the final weights are gathered into this.
        self._unsharded = None
        if self.fsdp and save_fn is not None and acc.is_main_process:
            self._unsharded = storage_free_copy(model)
        self.loss_fn, self.sample_fn, self.save_fn = loss_fn, sample_fn, save_fn
        loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=len(dataset) >= config.batch_size,
            collate_fn=collate_fn,
            generator=torch.Generator().manual_seed(config.seed),
        )
        fsdp1 = self.fsdp and acc.state.fsdp_plugin.fsdp_version == 1
        if fsdp1:  # FSDP1 flattens the parameters as it wraps: the optimizer must take the wrapped ones
            model = acc.prepare(model)
        optimizer = make_optimizer(model.parameters(), config.optim)
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup(config.optim.warmup_steps))
        if fsdp1:
            self.model = model
            self.optimizer, self.loader, self.lr_scheduler = acc.prepare(optimizer, loader, lr_scheduler)
        else:  # one call: FSDP2 shards the model in place and re-points the optimizer at the shards
            prepared = acc.prepare(model, optimizer, loader, lr_scheduler)
            self.model, self.optimizer, self.loader, self.lr_scheduler = prepared
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        root = self.output_dir / "checkpoints"
        final = root / f"checkpoint-{self.step}"
        tmp = root / f".tmp-checkpoint-{self.step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()  # every process has written its RNG state into tmp before it is renamed
        if acc.is_main_process:
            save_config(self.config, tmp / "config.yaml")
            # Written last: what a complete checkpoint holds, so a file lost or cut short later is recognised.
            files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            state = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "files": files}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
            swap_in(tmp, final)  # atomic: a checkpoint folder exists only once complete
            for old in checkpoints(self.output_dir)[: -self.config.keep_last]:
                # Renamed first: a kill while deleting leaves a hidden leftover, never a half checkpoint.
                trash = old.with_name(f".trash-{old.name}")
                os.replace(old, trash)
                shutil.rmtree(trash)
            self._plot_losses()
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        rng = Path(path) / f"{RNG_STATE_NAME}_{self.accelerator.process_index}.pkl"
        problem = rng_state_problem(rng)
        if problem is not None:  # accelerate goes on without it, silently
            logger.warning("resuming from %s without its RNG state: %s cannot be read (%s); the random draws (noise, "
                           "timesteps, dropout) will differ from those of an uninterrupted run", path, rng, problem)
        try:
            self.accelerator.load_state(str(path))  # tensors by safetensors, the rest by torch.load(weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(f"checkpoint {path} holds a pickle that is not plain tensors, refused (it could run "
                             f"code): {str(err).strip().splitlines()[0]}") from None
        state = json.loads((path / "trainer_state.json").read_text())
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        if self.accelerator.is_main_process:
            self._forget_losses_after(self.step)
        logger.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------ logs
    def _log_loss(self, loss: float) -> None:
        self.accelerator.log({"loss": loss, "lr": self.lr_scheduler.get_last_lr()[0]}, step=self.step)
        if self.accelerator.is_main_process:
            with open(self.output_dir / "losses.csv", "a") as f:
                f.write(f"{self.step},{loss:.6f}\n")

    def _forget_losses_after(self, step: int) -> None:
        """Drop `losses.csv` rows past `step`: a run killed between checkpoints logged steps it now redoes."""
        path = self.output_dir / "losses.csv"
        if not path.is_file():
            return
        rows = path.read_text().splitlines()
        kept = [r for r in rows if r.strip() and int(r.split(",")[0]) <= step]
        if len(kept) != len(rows):
            with atomic_path(path) as tmp:
                tmp.write_text("".join(f"{r}\n" for r in kept))

    def _plot_losses(self) -> None:
        path = self.output_dir / "losses.csv"
        if not path.is_file():
            return
        from ..utils.plots import plot_loss_curve

        plot_loss_curve(path, self.output_dir / "loss.png", title=Path(self.config.output_dir).name)

    def _sample(self) -> None:
        acc = self.accelerator
        # Under FSDP every forward gathers the shards from all processes: each samples, the main one writes.
        if self.sample_fn is None or not (acc.is_main_process or self.fsdp):
            return
        from ..utils.video import write_video

        model = self.model if self.fsdp else acc.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        with torch.random.fork_rng():  # sampling must not change the training run's random stream
            videos = self.sample_fn(model, self.step)
        model.train(was_training)
        if not acc.is_main_process:
            return
        folder = self.output_dir / "samples"
        tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
        for i, (name, frames) in enumerate(videos.items()):
            write_video(folder / f"step{self.step:06d}-{i}.gif", frames, fps=8)
            if tracker is not None:  # a strip of frames: add_video would need moviepy
                strip = np.concatenate(list(frames), axis=1)  # (H, T*W, 3)
                tracker.add_image(f"samples/{i}", strip, self.step, dataformats="HWC")

    def _final_model(self) -> torch.nn.Module | None:
        """The trained model as one module. Under FSDP every process must call this: the shards are gathered
        (a collective) into the CPU copy the main process made before sharding; the others get None."""
        acc = self.accelerator
        if not self.fsdp:
            return acc.unwrap_model(self.model)
        state = acc.get_state_dict(self.model)  # full tensors on the main process's CPU, {} on the others
        return fill_storage_free_copy(self._unsharded, state) if acc.is_main_process else None

    # ------------------------------------------------------------------ loop
    def _stop_flags(self, started: float, interrupted: bool) -> tuple[bool, bool]:
        """(out of time, Ctrl+C) on any process: reduced, so every process stops at the same step."""
        late = self.config.max_minutes is not None and time.monotonic() - started >= 60 * self.config.max_minutes
        if self.accelerator.num_processes == 1:
            return late, interrupted
        flags = torch.tensor([late, interrupted], dtype=torch.float32, device=self.accelerator.device)
        flags = self.accelerator.reduce(flags, reduction="sum")
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _warn_about_warmup(self) -> None:
        warmup, steps = self.config.optim.warmup_steps, self.config.max_steps
        if warmup >= steps:
            logger.warning("optim.warmup_steps=%d >= max_steps=%d: the whole run is warm-up (the learning rate "
                           "reaches %.0f%% of optim.lr); lower optim.warmup_steps", warmup, steps,
                           100 * min(1.0, steps / warmup))

    def train(self, resume: str | None = None) -> TrainResult:
        """Train to `config.max_steps` (from a checkpoint with `resume`: "latest" or a checkpoint folder).

        Raises:
            ValueError: the output folder is in use by another run, or the checkpoint to resume from cannot be read.
            TrainingDiverged: the loss became NaN or infinite.
            TrainingInterrupted: Ctrl+C (a KeyboardInterrupt); the message names the checkpoint to resume from.
        """
        with run_lock(self.output_dir):
            try:
                return self._train(resume)
            finally:
                self.accelerator.end_training()

    def _train(self, resume: str | None) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            remove_leftovers(self.output_dir)
        acc.wait_for_everyone()
        self._warn_about_warmup()
        start = resolve_resume(self.output_dir, resume)
        save_config(cfg, self.output_dir / "config.yaml")
        acc.init_trackers("train", config=hparams(cfg))
        if start is not None:
            self.load_checkpoint(start)

        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not acc.is_main_process, desc=self.output_dir.name)
        self.model.train()
        try:
            with _StopOnCtrlC() as ctrl_c:
                loss_value, out_of_time = self._loop(bar, ctrl_c)
        except KeyboardInterrupt as err:
            bar.close()
            if isinstance(err, TrainingInterrupted):
                raise
            # Stopped inside a step (a second Ctrl+C): the weights may be half updated, so no checkpoint now.
            last = checkpoints(self.output_dir)
            raise TrainingInterrupted(f"interrupted during step {self.step + 1}; latest checkpoint: "
                                      f"{last[-1] if last else 'none'} (resume with --resume latest)") from None
        bar.close()
        if out_of_time:
            logger.info("max_minutes=%s reached at step %d; writing final/", cfg.max_minutes, self.step)
        acc.wait_for_everyone()
        if self.save_fn is not None:
            model = self._final_model()
            if acc.is_main_process:
                # Written beside and renamed: a kill while writing leaves the previous final/ (or none).
                final, tmp = self.output_dir / "final", self.output_dir / ".tmp-final"
                shutil.rmtree(tmp, ignore_errors=True)
                self.save_fn(model, tmp)
                swap_in(tmp, final)
        if acc.is_main_process:
            self._plot_losses()
        return TrainResult(step=self.step, last_loss=loss_value, output_dir=self.output_dir)

    def _loop(self, bar, ctrl_c: _StopOnCtrlC) -> tuple[float, bool]:
        """Optimizer steps until max_steps, max_minutes or Ctrl+C. Returns (last loss, out of time)."""
        cfg, acc = self.config, self.accelerator
        loss_value = math.nan
        started, out_of_time = time.monotonic(), False
        while self.step < cfg.max_steps and not out_of_time:
            self.loader.set_epoch(self.epoch)
            loader = acc.skip_first_batches(self.loader, self.batch_in_epoch) if self.batch_in_epoch else self.loader
            for batch in loader:
                with acc.accumulate(self.model):
                    loss = self.loss_fn(self.model, batch)
                    if not torch.isfinite(loss.detach()):
                        bar.close()  # end the progress line, so the message gets a line of its own
                        last = checkpoints(self.output_dir)
                        raise TrainingDiverged(
                            f"loss is {loss.item()} at step {self.step}; stopped. Last good checkpoint: "
                            f"{last[-1] if last else 'none'} (try a lower optim.lr or mixed_precision: no)"
                        )
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.optim.max_grad_norm:
                        acc.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.batch_in_epoch += 1
                if not acc.sync_gradients:
                    continue
                self.step += 1
                loss_value = acc.gather(loss.detach()[None]).mean().item()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    self._log_loss(loss_value)
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self._sample()
                out_of_time, interrupted = self._stop_flags(started, ctrl_c.requested)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps or out_of_time or interrupted:
                    saved = self.save_checkpoint()
                if interrupted:
                    bar.close()
                    raise TrainingInterrupted(f"interrupted at step {self.step}; saved {saved} "
                                              "(resume with --resume latest)")
                if self.step >= cfg.max_steps or out_of_time:
                    break
            else:
                self.epoch += 1
                self.batch_in_epoch = 0
        return loss_value, out_of_time
