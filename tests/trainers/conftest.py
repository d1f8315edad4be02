"""Trainer tests run single-threaded: tiny matmuls on 2 shared cores lose badly to OpenMP
oversubscription (a tiny-model forward goes from ~8 ms to ~400 ms under xdist's second worker)."""

import torch

torch.set_num_threads(1)
