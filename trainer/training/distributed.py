"""Several processes, one job: fastai's DistributedDataParallel training through accelerate.

`torchrun --nproc_per_node N -m trainer fit ...` (or `trainer fit ... --nproc N`, which runs
torchrun itself) starts N copies of the same command. torchrun sets RANK, LOCAL_RANK and
WORLD_SIZE; each process builds the same data and learner, fastai's DistributedTrainer gives
each rank its shard of every batch and all-reduces the gradients, and only rank 0 prints and
writes the run directory. --bs is per process; the learning rate is used as given.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    backend: str | None = None  # set once this process has joined the process group
    launched: bool = False  # started by torchrun or accelerate launch: joins a process group, even as its only rank

    @property
    def main(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict:
        return {"world_size": self.size, "backend": self.backend, "rank_of_writer": 0}


def world_from_env() -> World:
    """What torchrun (or accelerate launch, or SLURM through torchrun) told this process."""
    from fastai.torch_core import num_distrib, rank_distrib  # what fastai's DistributedDL shards by

    # A launcher sets these for env:// rendezvous. Then even one process trains through DistributedDataParallel,
    # so `--nproc 1` on a single GPU exercises the same path (nccl, index broadcast) as a multi-GPU job.
    launched = all(name in os.environ for name in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))
    return World(rank_distrib(), int(os.environ.get("LOCAL_RANK", "0")), num_distrib() or 1, launched=launched)


def join(world: World, device) -> World:
    """Join the process group: nccl between GPUs, gloo between CPU processes."""
    import torch.distributed as dist

    if not world.launched:
        return world
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)  # nccl's collectives run on the current device
    if not dist.is_initialized():
        # A dead peer should end the job in minutes, not hang it for torch's default half hour.
        dist.init_process_group(backend, timeout=timedelta(minutes=float(os.environ.get("TRAINER_DIST_TIMEOUT_MIN", 10))))
    return World(world.rank, world.local_rank, world.size, dist.get_backend(), launched=True)


def leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def trainer_callback(world: World, device):
    """fastai's DistributedTrainer, with one step adapted so CPU (gloo) processes work too."""
    import torch
    import torch.distributed as dist
    from fastai.distributed import DistributedDL, DistributedTrainer

    class IndexBroadcastDL(DistributedDL):
        def _broadcast(self, t, rank):
            # fastai moves the shuffled indices to CUDA because nccl only sends CUDA tensors;
            # gloo sends CPU tensors, and a CPU-only process has no CUDA to move them to.
            t = torch.LongTensor(t)
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.broadcast(t, rank)
            return t.cpu().tolist()

    class Trainer(DistributedTrainer):
        def _wrap_dl(self, dl):
            return dl if isinstance(dl, DistributedDL) else IndexBroadcastDL(dl, device=self.learn.model.device)

    # SyncBatchNorm needs CUDA tensors (nccl); CPU ranks keep their own BatchNorm statistics.
    return Trainer(sync_bn=world.backend == "nccl", cpu=device.type == "cpu")


def signal_sync(checkpoints=None):
    """A callback that makes every rank stop at the same batch on Ctrl-C/SIGTERM.

    Ranks stopping one batch apart would leave the others waiting in an all-reduce. So the signal
    handler (checkpoint.stop_on_signals) only sets this callback's `signum`; after each training
    batch and each epoch the ranks share it (all_reduce max), and all act on it together: rank 0
    hands it to its Checkpoints (which stops at once while training, or saves the epoch first),
    the others stop."""
    import torch
    import torch.distributed as dist
    from fastai.callback.core import Callback

    from trainer.training.checkpoint import Checkpoints, Interrupted

    # not accelerate's set_trigger/check_trigger: its 0/1 flag loses which signal came (exit 130 or 143); no faster
    class SignalSync(Callback):
        order = Checkpoints.order - 1

        def __init__(self):
            self.signum = None

        def shared(self) -> int:
            flag = torch.tensor([self.signum or 0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return int(flag.item())

        def act(self):
            signum = self.shared()
            if not signum:
                return
            if checkpoints is None:
                raise Interrupted(signum)
            checkpoints.signum = signum

        def after_batch(self):
            if self.training:
                self.act()

        def after_epoch(self):
            self.act()

    return SignalSync()


@contextmanager
def distributed(learn, world: World, device):
    """Train `learn` as one rank of `world` (nothing changes for a process that no launcher started)."""
    if world.backend is None:
        yield
        return
    callback = trainer_callback(world, device)
    learn.add_cb(callback)
    try:
        yield
        barrier()  # every rank is past its last collective before any tears the group down
    finally:
        learn.remove_cb(callback)
        leave()
        # What follows (rank 0's export and interpretation) runs in one process; fastai's gather
        # helpers read WORLD_SIZE, so from here on they must see a single process.
        os.environ["WORLD_SIZE"] = "1"


def launch(nproc: int, args: list[str], cfg=None) -> int:
    """`trainer fit ... --nproc N`: `trainer ARGS` (built from the resolved options) in N processes under
    torchrun's elastic agent, which stops every worker when one fails. Returns the exit code for the user."""
    check_launch(nproc, cfg)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from trainer.errors import TrainingInterrupted

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id="trainer",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5)
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores: each process gets its part, not all of them
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    quiet_agent_logs()
    try:
        elastic_launch(config, sys.executable)("-m", "trainer", *args)
    except SignalException as e:  # Ctrl-C or SIGTERM: torchrun passed it on; rank 0 saved and said how to resume
        import signal

        raise TrainingInterrupted(f"stopped by {signal.Signals(e.sigval).name}; every worker was stopped "
                                  f"(rank 0's message above has the --resume command)", e.sigval) from None
    except ChildFailedError as e:
        return failed_job(e)
    return 0


def check_launch(nproc: int, cfg) -> None:
    """Bad input fails here, once, not in N processes."""
    from trainer.errors import BadInput

    if nproc < 1:
        raise BadInput(f"--nproc must be a whole number of at least 1, got {nproc}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # num_distrib(), read before torch loads: instant refusal
        raise BadInput("--nproc inside torchrun or accelerate launch: drop --nproc, the launcher starts the processes")
    if cfg is not None:
        from trainer.options import check_lr_processes
        from trainer.recipes import get_recipe

        cfg.resolve(get_recipe(cfg.recipe))
        check_lr_processes(cfg.lr, nproc)  # --lr auto/review: lr_find in one process
    import torch

    device = cfg.device if cfg is not None else "auto"
    if device.startswith("cuda") or device == "auto" and torch.cuda.is_available():
        if nproc > torch.cuda.device_count():
            raise BadInput(f"--nproc {nproc}: only {torch.cuda.device_count()} GPU(s) here; one process per GPU")


def quiet_agent_logs() -> None:
    """torchrun's agent logs each worker it ends; the workers' own messages and ours say it in one line each."""
    import logging

    for name in [n for n in logging.Logger.manager.loggerDict if n.startswith("torch.distributed.elastic")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)  # torch sets each module's own level


def failed_job(error) -> int:
    """The exit code, or the one-line error, for a job whose workers failed (torchrun's ChildFailedError)."""
    from trainer.errors import TrainingFailed, TrainingInterrupted

    if {failure.exitcode for failure in error.failures.values()} == {2}:
        return 2  # every rank refused the same bad input and said why
    rank, failure = error.get_first_failure()  # the cause; the others were ended because of it
    if failure.exitcode in (130, 143):  # the workers themselves were signalled, and stopped cleanly
        raise TrainingInterrupted("the workers were stopped by a signal (rank 0's message above has the "
                                  "--resume command)", failure.exitcode - 128) from None
    raise TrainingFailed(f"worker rank {rank} exited with code {failure.exitcode}: the job stopped, "
                         f"every worker was ended (see the worker's message above)") from None
