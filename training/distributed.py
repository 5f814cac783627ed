"""One training program on several processes: PyTorch's own launcher (torchrun) and what the ranks agree on.

A run with `nproc_per_node` > 1 re-executes itself under `python -m torch.distributed.run --standalone`
(torchrun: a rendezvous on this machine at a free port, one process per GPU or, on a CPU, per share of the
cores, the gloo backend there). The worker and `loraq train --nproc_per_node N` take the same door. torchrun
watches its ranks: when one exits non-zero or is killed, it stops the others at once (SIGTERM, then SIGKILL),
so a dead rank never leaves the others waiting in a collective until its timeout. Each rank dies with its
launcher (torchrun starts ranks in their own sessions, so the supervisor's kill of the launcher's process
group alone would not reach them).

The trainer's arguments for DDP (the default) and FSDP2 are set here too, along with the helpers that let
rank 0 go first (generating the built-in model, tokenizing a file) and gather a sharded model's weights.

Only rank 0 writes progress records, marks checkpoints complete and saves the adapter; decisions taken from
files or clocks (stop now, time is up) are rank 0's, sent to every rank, so all ranks stop at the same step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.config import TrainingConfig

# torchrun checks its ranks this often (its default is 0.1 s in recent versions; said here so it stays short).
MONITOR_INTERVAL_SECONDS = 0.1


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def under_launcher() -> bool:
    """Whether this process is one of torchrun's ranks."""
    return "LOCAL_RANK" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ


def launcher_command(nproc_per_node: int, program_args: list[str]) -> list[str]:
    """torchrun on this machine running `python -m training.run <program_args>` in `nproc_per_node` ranks."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
        f"--monitor_interval={MONITOR_INTERVAL_SECONDS}", "--max_restarts=0",
        "-m", "training.run", *program_args,
    ]  # fmt: skip


def launcher_environment(nproc_per_node: int) -> dict[str, str]:
    """Each rank gets its share of the CPU threads this run was given (OMP_NUM_THREADS, else every core):
    torchrun would give each one thread when unset, and the whole allowance to each when set."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    share = str(max(1, threads // nproc_per_node))
    return dict(os.environ, OMP_NUM_THREADS=share, MKL_NUM_THREADS=share)


def exec_under_launcher(nproc_per_node: int, program_args: list[str]) -> None:
    """Replace this process by torchrun (same pid: the supervisor's child, its process group, its death
    signal all carry over)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, launcher_command(nproc_per_node, program_args), launcher_environment(nproc_per_node))


def die_with_launcher() -> None:
    """In a rank: the kernel kills it (SIGKILL) if torchrun dies, whoever killed it (Linux)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the launcher died before the call above
        os._exit(1)


def lost_a_peer(exc: BaseException) -> bool:
    """Whether `exc` is this rank's collective failing because another rank died (gloo: the peer closed the
    connection; NCCL: the communicator was aborted). That rank's death is the story; torchrun reports it."""
    if world_size() == 1:
        return False
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or any(sign in text for sign in PEER_LOST_SIGNS)


PEER_LOST_SIGNS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "remote worker crashing",
    "communicator was aborted",
)


# --------------------------------------------------------------------------- the trainer on several processes


def trainer_arguments(config: TrainingConfig, checkpointing: bool = False) -> dict:
    """Trainer arguments for a run on several processes: DDP with every LoRA weight
    used in every step (no search for unused parameters) and buffers left alone (LoRA has none to sync), or
    FSDP2 sharding each decoder layer (on a CPU too: gloo); nothing for one process."""
    import torch

    from training.hardware import HardwareError

    if config.nproc_per_node == 1:
        return {}
    if world_size() != config.nproc_per_node:
        raise HardwareError(
            f"nproc_per_node is {config.nproc_per_node} but {world_size()} processes were started; "
            "run through `python -m training.run` (it launches torchrun itself)"
        )
    if torch.cuda.is_available() and torch.cuda.device_count() < config.nproc_per_node:
        raise HardwareError(
            f"the job asks for {config.nproc_per_node} GPUs but this worker sees {torch.cuda.device_count()}; "
            "route it to a worker started with `loraq worker --gpus-per-job` of that size"
        )
    if config.strategy == "fsdp":
        return {
            # FSDP2: each decoder layer (the model's _no_split_modules) one shard unit; per-parameter sharding,
            # so frozen base weights and trainable LoRA weights need no flat-parameter arrangement.
            "fsdp": True,
            # Its activation checkpointing: the trainer's own would gather each layer's shards once more.
            "fsdp_config": {
                "version": 2,
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "activation_checkpointing": checkpointing,
            },
            **_cpu_arguments(),
        }
    return {"ddp_find_unused_parameters": False, "ddp_broadcast_buffers": False, **_cpu_arguments()}


def _cpu_arguments() -> dict:
    """On a CPU the ranks talk through gloo (transformers would otherwise not see a distributed CPU run)."""
    import torch

    return {} if torch.cuda.is_available() else {"use_cpu": True, "ddp_backend": "gloo"}


def join_process_group(config: TrainingConfig) -> None:
    """Join the ranks' process group before anything else does (loading the model would, on its own terms),
    through accelerate's shared state, which the trainer then reuses."""
    if config.nproc_per_node > 1:
        import torch
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first; the others wait for it, then run it (as is with one process)."""
    if not is_main_process():
        wait_for_all()
    yield
    if is_main_process():
        wait_for_all()


def sharded(config: TrainingConfig) -> bool:
    """Whether the model is sharded over the processes (FSDP)."""
    return config.nproc_per_node > 1 and config.strategy == "fsdp"


def gathered_weights(trainer: Any, config: TrainingConfig) -> dict | None:
    """With FSDP, the model's full weights gathered from every rank's shards (every rank must call this; rank
    0 gets them); None otherwise (each rank holds the whole model)."""
    return trainer.accelerator.get_state_dict(trainer.model) if sharded(config) else None


# --------------------------------------------------------------------------- collectives


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def from_main_process(value: Any) -> Any:
    """Rank 0's `value`, on every rank (as is when not distributed)."""
    if not _initialized():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def largest(value: int, device: Any) -> int:
    """The largest of every rank's `value`."""
    if not _initialized():
        return value
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def wait_for_all() -> None:
    if _initialized():
        import torch.distributed as dist

        dist.barrier()
