"""`om` as one rank of a torchrun launch, with a fault injected into rank 1 before its step 3.

Used by tests/test_distributed.py only: `python -m torch.distributed.run ... tests/distributed_fault.py train RECIPE ...`.
"""

from om.train.loop import Trainer
from omcli.app import main

FAIL_RANK, FAIL_STEP = 1, 3
_train_step = Trainer._train_step


def _failing_step(self, lr):
    if self.dist.rank == FAIL_RANK and self.p.step + 1 == FAIL_STEP:
        raise RuntimeError(f"injected fault before step {FAIL_STEP}")
    return _train_step(self, lr)


Trainer._train_step = _failing_step

if __name__ == "__main__":
    main()
