import os

import torch

# Tests are small; two threads match the CI machine and avoid oversubscription.
torch.set_num_threads(min(2, os.cpu_count() or 1))
