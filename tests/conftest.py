import os

# One intra-op thread per test process (DDP workers inherit it through the environment): the tests run
# thousands of tiny ops, which on 2 cores are faster, and far steadier, without thread handoffs.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
