"""One training program on several processes: PyTorch's own launcher (torchrun) and what the ranks agree on.

A run with `nproc_per_node` > 1 re-executes itself under `python -m torch.distributed.run --standalone`
(torchrun: a rendezvous on this machine at a free port, one process per GPU or, on a CPU, per share of the
cores, the gloo backend there). The worker and `loraq train --nproc_per_node N` take the same door. torchrun
watches its ranks: when one exits non-zero or is killed, it stops the others at once (SIGTERM, then SIGKILL),
so a dead rank never leaves the others waiting in a collective until its timeout. Each rank dies with its
launcher (torchrun starts ranks in their own sessions, so the supervisor's kill of the launcher's process
group alone would not reach them).

Only rank 0 writes progress records, marks checkpoints complete and saves the adapter; decisions taken from
files or clocks (stop now, time is up) are rank 0's, sent to every rank, so all ranks stop at the same step.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

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
