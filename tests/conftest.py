import torch

# Test models are tiny: one thread avoids synchronisation overhead and oversubscription.
torch.set_num_threads(1)
