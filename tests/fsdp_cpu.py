"""Test-only launcher: `sft` with FSDP2 on CPU processes (gloo), through the same Trainer path users run.

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_cpu.py train RECIPE

accelerate builds FSDP only for GPU-family distributed types (accelerate/state.py), so on CPU the Trainer would
silently run DDP, and sft refuses `train.fsdp` there. This launcher lifts both, for tests only: once accelerate has
built its state, a MULTI_CPU state that was handed an FSDP plugin is switched to FSDP with that plugin (what the
GPU branch does), and sft's CPU refusal is lifted. `tests/test_fsdp_cpu.py` guards that the switch still works
with the installed accelerate.
"""

from __future__ import annotations

import os
import sys


def enable() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    import sft.switches

    original = AcceleratorState.__init__
    if getattr(original, "_sft_fsdp_cpu", False):
        return

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            # as accelerate does at the end of its own init: later AcceleratorState() calls copy this back
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    __init__._sft_fsdp_cpu = True
    AcceleratorState.__init__ = __init__
    sft.switches.FSDP_NEEDS_GPU = False


def die_after_checkpoint(step: int) -> None:
    """SIGKILL every rank once the checkpoint of `step` is written (the Trainer's on_save event): a kill at a
    known point, where a timed kill would race a 1-second run."""
    import signal

    import torch.distributed as dist
    from transformers.trainer_callback import CallbackHandler

    original = CallbackHandler.on_save

    def on_save(self, args, state, control):
        control = original(self, args, state, control)
        if state.global_step == step:
            dist.barrier()
            os.kill(os.getpid(), signal.SIGKILL)
        return control

    CallbackHandler.on_save = on_save


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    enable()
    if os.environ.get("SFT_TEST_KILL_AFTER_CHECKPOINT"):
        die_after_checkpoint(int(os.environ["SFT_TEST_KILL_AFTER_CHECKPOINT"]))
    from sft.cli import main

    sys.exit(main(sys.argv[1:]))
